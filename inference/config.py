"""JSON configuration files (config.json, adapter_config.json, tokenizer_config.json, ...): strict reading."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def read_json(path: Path, error=ConfigError) -> dict:
    """Load a JSON object from ``path``, raising ``error`` with a one-line message when it is missing or malformed."""
    if path.exists() and not path.is_file():  # a directory, or a FIFO or device that would block or never end
        raise error(path, "not a regular file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise error(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(path, f"cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise error(path, "expected a JSON object")
    return data
