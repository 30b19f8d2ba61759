"""Typed errors of the engine. Every message is one line that names the file and the problem."""

from pathlib import Path


class InferenceError(Exception):
    """Base class: ``str(err)`` is ``"<file>: <problem>"`` on one line."""

    def __init__(self, path: "Path | str | None", problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)


class CheckpointError(InferenceError):
    """A model directory or safetensors file is missing, truncated, corrupt or does not fit its config."""


class ConfigError(InferenceError):
    """config.json (or another JSON config) is missing, malformed or describes an unsupported model."""


class AdapterError(InferenceError):
    """A LoRA adapter directory is malformed or does not fit the model."""


class TokenizerError(InferenceError):
    """tokenizer.json / tokenizer_config.json / the chat template cannot be used."""
