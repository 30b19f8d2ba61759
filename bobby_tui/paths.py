"""Where bobby-tui keeps its files: platformdirs' per-user dirs (XDG_* on Linux)."""

from pathlib import Path

import platformdirs

APP_NAME = "bobby-tui"


def config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def db_path() -> Path:
    return data_dir() / "history.sqlite3"
