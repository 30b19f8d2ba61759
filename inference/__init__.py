"""bobby-tui's inference engine: MLX 4-bit Qwen3 with runtime LoRA, no mlx_lm or transformers at run time."""

from .checkpoint import LoadProgress
from .errors import AdapterError, CheckpointError, ConfigError, InferenceError, TokenizerError
from .generate import DraftDone, Engine, GenerationRequest, GenerationStats, TokenDelta, compute_dtype
from .sampling import SamplingParams

__all__ = [
    "AdapterError", "CheckpointError", "ConfigError", "DraftDone", "Engine", "GenerationRequest", "GenerationStats",
    "InferenceError", "LoadProgress", "SamplingParams", "TokenDelta", "TokenizerError", "compute_dtype",
]
