"""The user's config.toml: defaults, validation that never stops the app, and line-preserving edits."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bobby_tui.paths import config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


@dataclass
class Sampling:
    temperature: float = 0.95
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 280
    spread: list[float] = field(default_factory=lambda: [0.7, 0.95, 1.2])  # temperatures of a spread (N = len)


@dataclass
class PostProcess:
    strip_think: bool = True
    trim: bool = True
    strip_hashtags: bool = False
    strip_emoji: bool = False
    enforce_limit: bool = True
    min_length: int = 80
    retries: int = 2


@dataclass
class Config:
    model: Path | None = None
    adapter: Path | None = None
    use_adapter: bool = True
    theme: str = "bobby-dark"
    post_limit: int = 300
    default_prompt: str = "Write a post."
    system_prompt: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    postprocess: PostProcess = field(default_factory=PostProcess)
    keys: dict[str, str] = field(default_factory=dict)  # action name -> key, overrides the app's default bindings


class ConfigError(Exception):
    """A config file that cannot be read, parsed or edited. The message is one line naming the file."""


# --- reading -------------------------------------------------------------------------------------------


def load_config(path: Path | None = None) -> tuple[Config, str | None]:
    """The config at `path` (default: the user's), and a one-line warning or None.

    Never raises for bad content: a malformed file gives the defaults, a bad key keeps that key's default.
    """
    try:
        return load_config_checked(path)
    except ConfigError as err:
        return Config(), str(err)


def load_config_checked(path: Path | None = None) -> tuple[Config, str | None]:
    """Like load_config, but a file that cannot be read or parsed raises ConfigError (the CLI exits on it).

    Unknown keys and bad values still only warn: the rest of the file is good.
    """
    path = path or config_path()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(), None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {_reason(err)}") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}:{_decode_error_location(err, raw)}") from None
    config = Config()
    problems: list[str] = []
    _apply(config, data, "", problems, path.parent)
    return config, (f"{path}: " + "; ".join(problems)) if problems else None


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _decode_error_location(err: tomllib.TOMLDecodeError, source: str) -> str:
    """"LINE:COL: message" from tomllib's error (attributes on Python 3.14+, parsed from the message before)."""
    message = getattr(err, "msg", None) or str(err).splitlines()[0]
    lineno, colno = getattr(err, "lineno", None), getattr(err, "colno", None)
    match = _TOML_POSITION.search(message)
    if match:
        lineno, colno = int(match.group(1)), int(match.group(2))
        message = message[: match.start()]
    elif _TOML_AT_END.search(message):
        message = _TOML_AT_END.sub("", message) + " at end of file"
        lines = source.split("\n")
        lineno, colno = len(lines), len(lines[-1]) + 1
    position = f"{lineno}:{colno}: " if lineno is not None else " "
    return position + message[:1].lower() + message[1:]


def _apply(target: Any, data: dict, prefix: str, problems: list[str], base_dir: Path) -> None:
    """Copy `data` onto the dataclass `target`, field by field; each unusable key becomes one problem."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        name = prefix + key
        current = getattr(target, key, None) if key in fields else None
        if key not in fields:
            problems.append(f"unknown key '{name}'")
        elif dataclasses.is_dataclass(current):
            if isinstance(value, dict):
                _apply(current, value, name + ".", problems, base_dir)
            else:
                problems.append(f"'{name}' must be a table")
        else:
            converted, problem = _convert(key, value, base_dir)
            if problem:
                problems.append(f"'{name}' {problem}")
            else:
                setattr(target, key, converted)


# Allowed ranges of the numeric settings: (lowest, highest), inclusive; None is unbounded.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "top_k": (0, None),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.0, None),
    "max_tokens": (1, None),
    "post_limit": (1, None),
    "min_length": (0, None),
    "retries": (0, None),
}
_PATH_KEYS = {"model", "adapter"}
_BOOL_KEYS = {"use_adapter", "strip_think", "trim", "strip_hashtags", "strip_emoji", "enforce_limit"}
_INT_KEYS = {"top_k", "max_tokens", "post_limit", "min_length", "retries"}
_FLOAT_KEYS = {"temperature", "top_p", "min_p", "repetition_penalty"}


def _convert(key: str, value: Any, base_dir: Path) -> tuple[Any, str | None]:
    """(value as the Config field wants it, None) or (None, what is wrong with it)."""
    if key in _PATH_KEYS:
        if not isinstance(value, str) or not value:
            return None, "must be a path string"
        path = Path(value).expanduser()
        return (path if path.is_absolute() else base_dir / path), None  # relative to the config file
    if key in _BOOL_KEYS:
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if key in _INT_KEYS or key in _FLOAT_KEYS:
        return _convert_number(key, value)
    if key == "spread":
        if not isinstance(value, list) or not value:
            return None, "must be a non-empty list of temperatures"
        temps = [_convert_number("temperature", t) for t in value]
        bad = next((problem for _, problem in temps if problem), None)
        return (None, f"entries {bad}") if bad else ([t for t, _ in temps], None)
    if key == "keys":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return None, "must be a table of action = \"key\" strings"
        return dict(value), None
    return (value, None) if isinstance(value, str) else (None, "must be a string")


def _convert_number(key: str, value: Any) -> tuple[Any, str | None]:
    # bool is an int in Python; `true` is never a number in the config
    wants_int = key in _INT_KEYS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (wants_int and not isinstance(value, int)):
        return None, "must be an integer" if wants_int else "must be a number"
    if not math.isfinite(value):
        return None, "must be a finite number"
    low, high = _RANGES[key]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        return None, f"must be {bounds} (got {value})"
    return (value if wants_int else float(value)), None


# --- writing -------------------------------------------------------------------------------------------


def save_setting(key: str, value: Any, path: Path | None = None) -> None:
    """Set one setting in the user's file, keeping every other line (comments included) as it is.

    `key` is a top-level key ("theme") or "table.key" ("sampling.temperature"). `value` None removes
    the setting. The line is edited in place, or inserted (top-level keys before the first table).
    Raises ConfigError when the existing file does not parse, OSError when it cannot be written.
    """
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}:{_decode_error_location(err, text)} (not changing the file)") from None
    table, _, name = key.rpartition(".")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new_line = None if value is None else f"{_bare_or_quoted(name)} = {_toml_value(value)}"
    _set_line(lines, table, name, new_line)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash leaves the old file or the new one, never half of one


_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _set_line(lines: list[str], table: str, name: str, new_line: str | None) -> None:
    """Replace, insert or (new_line None) remove `name = ...` inside `table` ("" = top level), in place."""
    start, end = _table_span(lines, table)
    if start is None:
        if new_line is not None:
            if lines and lines[-1].strip():
                lines.append("\n")
            lines.extend([f"[{table}]\n", new_line + "\n"])
        return
    key_pattern = re.compile(rf"^\s*(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')\s*=")
    for i in range(start, end):
        if key_pattern.match(lines[i]):
            span = _value_span(lines, i, end)
            comment = _trailing_comment(lines[i]) if span == 1 else ""
            replacement = [] if new_line is None else [new_line + comment + "\n"]
            lines[i : i + span] = replacement
            return
    if new_line is not None:
        # after the table's last setting, so blank lines and comments that introduce the next table stay with it
        insert_at = start
        for i in range(start, end):
            stripped = lines[i].strip()
            if stripped and not stripped.startswith("#"):
                insert_at = i + 1
        lines.insert(insert_at, new_line + "\n")


def _table_span(lines: list[str], table: str) -> tuple[int | None, int]:
    """[start, end) of the lines of `table`'s body; start None when the file has no such table."""
    current, start = "", (0 if table == "" else None)
    for i, line in enumerate(lines):
        header = _TABLE_HEADER.match(line)
        if header and not _inside_multiline_value(lines, i):
            if start is not None:
                return start, i
            current = header.group(1)
            if current == table:
                start = i + 1
    return start, len(lines)


def _inside_multiline_value(lines: list[str], i: int) -> bool:
    """Whether line i continues a value begun on an earlier line (a '[' line inside a multi-line array or string)."""
    try:
        tomllib.loads("".join(lines[:i]))
        return False
    except tomllib.TOMLDecodeError:
        return True


def _value_span(lines: list[str], i: int, end: int) -> int:
    """How many lines the `key = value` starting at line i takes (multi-line strings and arrays take several)."""
    for span in range(1, end - i + 1):
        try:
            tomllib.loads("".join(lines[i : i + span]))
            return span
        except tomllib.TOMLDecodeError:
            continue
    return 1


def _trailing_comment(line: str) -> str:
    """The ` # comment` after a one-line value: the first '#' before which the line parses alone."""
    body = line.rstrip("\n")
    for match in re.finditer("#", body):
        try:
            tomllib.loads(body[: match.start()])
        except tomllib.TOMLDecodeError:
            continue
        return "  " + body[match.start() :].strip()
    return ""


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _bare_or_quoted(name: str) -> str:
    return name if _BARE_KEY.match(name) else _toml_value(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        escaped = "".join(c if c.isprintable() or c in "\\" else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_bare_or_quoted(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to config.toml")


# --- which model to run --------------------------------------------------------------------------------


def resolve_model(
    config: Config, model: Path | None, adapter: Path | None, no_adapter: bool
) -> tuple[Path, Path | None, bool]:
    """(model_dir, adapter_dir, is_demo) from the command line first, then the config, then the demo.

    The configured adapter belongs to the configured model: a --model from the command line runs with
    no adapter unless --adapter is given too.
    """
    if model is None and config.model is None:
        from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR  # the demo is only needed as a fallback

        model_dir, default_adapter, is_demo = DEMO_MODEL_DIR, DEMO_ADAPTER_DIR, True
    elif model is None:
        model_dir, default_adapter, is_demo = config.model, config.adapter, False
    else:
        model_dir, default_adapter, is_demo = model, None, False
    if no_adapter:
        return model_dir, None, is_demo
    if adapter is not None:
        return model_dir, adapter, is_demo
    return model_dir, (default_adapter if config.use_adapter else None), is_demo
