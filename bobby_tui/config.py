"""The user's config.toml: defaults, validation that never stops the app, and edits that keep the file's layout."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.items

from bobby_tui.paths import config_path
from inference.api import SAMPLING_LIMITS, Limit

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


# The keys a [personas.NAME] table may set: each overrides the top-level or [sampling] setting of that name.
PERSONA_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")


@dataclass
class Persona:
    """A named preset from a [personas.NAME] table; None where the table does not set the key."""

    name: str
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    adapter: str | None = None  # a name in adapters_dir, a path (absolute once read), or "" for no adapter
    post_limit: int | None = None


@dataclass
class Config:
    model: Path | None = None
    adapter: Path | None = None
    adapters_dir: Path | None = None  # each subdirectory an mlx_lm adapter, picked by its name
    models_dir: Path | None = None  # each subdirectory a model
    persona: str | None = None  # the [personas.NAME] applied when none is picked (after with_persona: the one applied)
    use_adapter: bool = True
    theme: str = "bobby-dark"
    post_limit: int = 300
    default_prompt: str = "Write a post."
    system_prompt: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    postprocess: PostProcess = field(default_factory=PostProcess)
    keys: dict[str, str] = field(default_factory=dict)  # action name -> key, overrides the app's default bindings
    personas: dict[str, Persona] = field(default_factory=dict)
    # Where the engine runs (bobby_tui.engines): "" in this process, "auto" on a server answering at the default
    # address if one does, or a `bobby-tui serve` URL such as "http://127.0.0.1:8765".
    server: str = ""

    def with_persona(self, name: str | None) -> Config:
        """A copy with persona `name`'s settings applied (None: the configured `persona`, if any; else a plain copy).

        Raises ConfigError for an unknown name, or for a persona adapter that is neither a name in adapters_dir nor
        a directory.
        """
        config = copy.deepcopy(self)
        name = name if name is not None else self.persona
        if name is None:
            return config
        persona = self.personas.get(name)
        if persona is None:
            known = ", ".join(sorted(self.personas)) or "none in the config"
            raise ConfigError(f"unknown persona {name!r} (known: {known})")
        config.persona = name
        for key in PERSONA_SAMPLING_KEYS:
            if getattr(persona, key) is not None:
                setattr(config.sampling, key, getattr(persona, key))
        if persona.system_prompt is not None:
            config.system_prompt = persona.system_prompt
        if persona.post_limit is not None:
            config.post_limit = persona.post_limit
        if persona.adapter == "":
            config.use_adapter = False
        elif persona.adapter is not None:
            config.adapter, config.use_adapter = resolve_adapter(self, persona.adapter), True
        return config


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
    personas = data.pop("personas", None)
    _apply(config, data, "", problems, path.parent)
    if personas is not None:
        config.personas = _read_personas(personas, problems, path.parent)
    if config.persona is not None and config.persona not in config.personas:
        problems.append(f"'persona' names {config.persona!r}, which has no [personas.{config.persona}] table")
        config.persona = None
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


# Allowed ranges of the numeric settings. The sampling ones are the engine's own (inference.api.SAMPLING_LIMITS),
# so the config never accepts what a generation would refuse.
_RANGES: dict[str, Limit] = {
    **{key: SAMPLING_LIMITS[key] for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")},
    "max_tokens": Limit(1, None, integer=True),
    "post_limit": Limit(1, None, integer=True),
    "min_length": Limit(0, None, integer=True),
    "retries": Limit(0, None, integer=True),
}
_PATH_KEYS = {"model", "adapter", "adapters_dir", "models_dir"}
_BOOL_KEYS = {"use_adapter", "strip_think", "trim", "strip_hashtags", "strip_emoji", "enforce_limit"}
_INT_KEYS = {"top_k", "max_tokens", "post_limit", "min_length", "retries"}
_FLOAT_KEYS = {"temperature", "top_p", "min_p", "repetition_penalty"}


MAX_SPREAD = 16  # drafts of one spread


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
        if len(value) > MAX_SPREAD:  # each size is warmed up at load, and the drafts are shown side by side
            return None, f"has {len(value)} temperatures, at most {MAX_SPREAD}"
        temps = [_convert_number("temperature", t) for t in value]
        bad = next((problem for _, problem in temps if problem), None)
        return (None, f"entries {bad}") if bad else ([t for t, _ in temps], None)
    if key == "keys":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return None, "must be a table of action = \"key\" strings"
        return dict(value), None
    return (value, None) if isinstance(value, str) else (None, "must be a string")


def _read_personas(data: Any, problems: list[str], base_dir: Path) -> dict[str, Persona]:
    """The [personas.NAME] tables; a bad key warns and leaves that persona's key unset (the default applies)."""
    if not isinstance(data, dict):
        problems.append("'personas' must be a table of [personas.NAME] tables")
        return {}
    personas = {}
    keys = {f.name for f in dataclasses.fields(Persona)} - {"name"}
    for name, table in data.items():
        prefix = f"personas.{name}"
        if not isinstance(table, dict):
            problems.append(f"'{prefix}' must be a table")
            continue
        persona = personas[name] = Persona(name)
        for key, value in table.items():
            if key not in keys:
                problems.append(f"unknown key '{prefix}.{key}'")
                continue
            converted, problem = _convert_persona_value(key, value, base_dir)
            if problem:
                problems.append(f"'{prefix}.{key}' {problem}")
            else:
                setattr(persona, key, converted)
    return personas


def _convert_persona_value(key: str, value: Any, base_dir: Path) -> tuple[Any, str | None]:
    if key == "adapter":
        if not isinstance(value, str):
            return None, "must be an adapter name, a path, or \"\" for none"
        if _is_adapter_name(value):
            return value, None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base_dir / path), None  # relative to the config file
    return _convert(key, value, base_dir)


def _is_adapter_name(value: str) -> bool:
    """"" (no adapter) or a bare name, to look up in adapters_dir; anything with a separator or ~ is a path."""
    return "/" not in value and os.sep not in value and not value.startswith("~") and value not in (".", "..")


def _convert_number(key: str, value: Any) -> tuple[Any, str | None]:
    # bool is an int in Python; `true` is never a number in the config (Limit.problem refuses it)
    problem = _RANGES[key].problem(value)
    if problem:
        return None, problem
    return (value if key in _INT_KEYS else float(value)), None


# --- writing -------------------------------------------------------------------------------------------


def save_setting(key: str, value: Any, path: Path | None = None) -> None:
    """Set one setting in the user's file, keeping everything else (comments, blank lines, order) as it is.

    `key` is a top-level key ("theme") or "table.key" ("sampling.temperature"). `value` None removes the setting.
    A new key goes after the last setting of its table (a new table at the end of the file). A symlinked config is
    written through the link: the file it points to is replaced atomically and keeps its mode.
    Raises ConfigError when the existing file does not parse or cannot be written.
    """
    path = path or config_path()
    try:
        target = path.resolve()  # write through symlinks: the link stays, the file it points to changes
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ConfigError(f"{path}: cannot follow the link: {_reason(err)}") from None
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {_reason(err)}") from None
    try:
        tomllib.loads(text)  # tomllib's message and position, the same as load_config reports
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}:{_decode_error_location(err, text)} (not changing the file)") from None
    document = tomlkit.parse(text)
    table_name, _, name = key.rpartition(".")
    if table_name and table_name not in document:
        if value is None:
            return
        document[table_name] = tomlkit.table()
    container = document[table_name] if table_name else document
    _set_item(container, name, _toml_item(value))
    _write_atomically(target, tomlkit.dumps(document), path)


def _set_item(container: Any, name: str, item: Any) -> None:
    """Replace, add or (item None) remove `name` in a tomlkit table, leaving every other line alone."""
    if item is None:
        container.pop(name, None)
    elif name in container:
        container[name] = item  # tomlkit keeps the line's trailing comment
    else:
        keys = [k for k in container if not isinstance(container[k], (tomlkit.items.Table, tomlkit.items.AoT))]
        if keys:
            # right after the table's last setting, so the comments and blank lines that introduce what follows stay
            # with it (tomlkit's public `add` appends after them); `_insert_after` is tomlkit's own placement helper
            body = container if isinstance(container, tomlkit.TOMLDocument) else container.value
            body._insert_after(keys[-1], name, item)
        else:
            container.add(name, item)


def _toml_item(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_toml_item(v) for v in value]
    return value


def _write_atomically(target: Path, text: str, shown: Path) -> None:
    """Replace `target` with `text`: a crash leaves the old file or the new one, never half of one. The temporary
    file has a unique name in the target's directory (two writers never share one) and the target's mode."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise ConfigError(f"{shown}: cannot write: {_reason(err)}") from None


# --- which model and adapter to run --------------------------------------------------------------------------------


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


def resolve_adapter(config: Config, name_or_path: str | Path) -> Path:
    """The adapter directory `name_or_path` means: a subdirectory of adapters_dir by that name, else a path.

    Raises ConfigError (one line) when it is neither.
    """
    text = str(name_or_path)
    if config.adapters_dir is not None and text and _is_adapter_name(text):
        candidate = config.adapters_dir / text
        if candidate.is_dir():
            return candidate
    path = Path(text).expanduser()
    if text and path.is_dir():
        return path
    where = f"not an adapter in {config.adapters_dir} and " if config.adapters_dir is not None else ""
    raise ConfigError(f"adapter {text!r}: {where}not a directory")


def adapter_names(folder: Path | None) -> list[str]:
    """The adapters in an adapters folder (its subdirectories, hidden ones left out), sorted; [] when it is None or
    no directory."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
