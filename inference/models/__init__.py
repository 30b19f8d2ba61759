"""Model families by config.json's ``model_type``: each is one module here (``qwen3.py``); a new family is a new file
and a line in ``FAMILIES``. What a family module provides is listed in ``base.py``'s docstring."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

from ..config import read_json
from ..errors import ConfigError
from .base import BaseModelArgs

FAMILIES = {"qwen3": "qwen3"}  # model_type -> module of this package


def family(model_type: object, path: Path) -> ModuleType:
    """The module of a ``model_type``; ConfigError naming ``path`` when it is not supported."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ConfigError(path, f"unknown model_type {model_type!r} (supported: {', '.join(FAMILIES)})")
    return import_module(f".{FAMILIES[model_type]}", __name__)


def read_model_args(model_dir: Path | str) -> BaseModelArgs:
    """``config.json`` of a model directory as its family's ``ModelArgs``."""
    path = Path(model_dir) / "config.json"
    raw = read_json(path)
    return family(raw.get("model_type"), path).ModelArgs.from_dict(raw, path)


def family_of(args: BaseModelArgs) -> ModuleType:
    return family(args.model_type, args.path)


def lora_keys(args: BaseModelArgs | None = None) -> tuple[str, ...]:
    """The projections an adapter may name: the family's, or (no model given) every family's."""
    families = [family_of(args)] if args is not None else [family(t, None) for t in FAMILIES]
    return tuple(dict.fromkeys(key for f in families for key in f.LORA_KEYS))
