"""Where bobby-tui keeps its files: platformdirs' per-user dirs (XDG_* on Linux)."""

import os
from pathlib import Path

import platformdirs

APP_NAME = "bobby-tui"


def config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def db_path() -> Path:
    return data_dir() / "history.sqlite3"


def kernel_cache_dir() -> Path:
    """Where MLX's CUDA backend keeps the kernels it compiles (its default, /tmp, is emptied on reboot)."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "mlx-kernels"


def keep_compiled_kernels() -> None:
    """Point MLX_PTX_CACHE_DIR at the user cache dir unless the user set it: on a CUDA machine the first
    generation compiles kernels for about a minute, and a kept cache brings later starts down to seconds.
    Must run before MLX first compiles a kernel (MLX reads the variable once)."""
    os.environ.setdefault("MLX_PTX_CACHE_DIR", str(kernel_cache_dir()))
