"""bobby-tui's inference engine: MLX 4-bit Qwen3 with runtime LoRA, no mlx_lm or transformers at run time.

This module is the whole public API: loading (``Engine.load`` with ``EngineOptions``), generation (``Engine.generate``
for one request, ``BatchGenerator`` for many sharing a batch), the request, parameter and event types, the errors,
and the checkpoint and adapter facts ``bobby-tui inspect`` prints (``inspect_model``, ``inspect_adapter``,
``inspect_adapters_dir`` for a folder of adapters).

The parameter, request and event types (``inference.api``), the options and the errors import without MLX, so a
front end's UI thread can build requests; everything else loads MLX on first use, which should be on the thread that
will own the model.
"""

from .api import (
    DraftDone,
    GenerationRequest,
    GenerationStats,
    LoadProgress,
    ParameterError,
    SamplingParams,
    TokenDelta,
)
from .errors import AdapterError, CheckpointError, ConfigError, InferenceError, TokenizerError
from .options import EngineOptions

# Loaded on first use, with MLX: what runs the model, and what reads checkpoints (the safetensors reader maps into MLX)
_ENGINE_NAMES = {
    "Engine": "engine", "BatchGenerator": "batching",
    "inspect_model": "inspection", "inspect_adapter": "inspection", "inspect_adapters_dir": "inspection",
    "ModelFacts": "inspection", "AdapterFacts": "inspection", "QuantSpec": "models.base", "read_model_args": "models",
}


def __getattr__(name: str):
    if name in _ENGINE_NAMES:
        from importlib import import_module

        value = getattr(import_module(f".{_ENGINE_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError", "AdapterFacts", "BatchGenerator", "CheckpointError", "ConfigError", "DraftDone", "Engine",
    "EngineOptions", "GenerationRequest", "GenerationStats", "InferenceError", "LoadProgress", "ModelFacts",
    "ParameterError", "QuantSpec", "SamplingParams", "TokenDelta", "TokenizerError",
    "inspect_adapter", "inspect_adapters_dir", "inspect_model", "read_model_args",
]
