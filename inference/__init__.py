"""bobby-tui's inference engine: MLX 4-bit Qwen3 with runtime LoRA, no mlx_lm or transformers at run time.

The parameter, request and event types (``inference.api``) and the errors import without MLX, so a front end's UI
thread can build requests; the engine itself (``Engine``, ``compute_dtype``) loads MLX on first use, which should be
on the thread that will own the model.
"""

from .api import (
    DraftDone, GenerationRequest, GenerationStats, LoadProgress, ParameterError, SamplingParams, TokenDelta,
)
from .errors import AdapterError, CheckpointError, ConfigError, InferenceError, TokenizerError
from .options import EngineOptions

_ENGINE_NAMES = {"Engine": "engine", "compute_dtype": "engine", "BatchGenerator": "batching"}


def __getattr__(name: str):
    if name in _ENGINE_NAMES:
        from importlib import import_module

        value = getattr(import_module(f".{_ENGINE_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError", "BatchGenerator", "CheckpointError", "ConfigError", "DraftDone", "Engine", "EngineOptions", "GenerationRequest", "GenerationStats",
    "InferenceError", "LoadProgress", "ParameterError", "SamplingParams", "TokenDelta", "TokenizerError",
    "compute_dtype",
]
