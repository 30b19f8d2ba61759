"""What a thread that ran MLX work does as it ends (the app's and the server's engine threads)."""

from __future__ import annotations

import sys


def release_mlx_streams() -> None:
    """Destroy the MLX streams this thread created, while the interpreter still runs. Left to MLX's exit-time
    destructors, a non-main thread's streams can abort the process ("terminate called without an active exception",
    exit 134); MLX asks every thread that used it to call `clear_streams` before it ends. Call it after the last
    MLX array of the thread is dropped."""
    mlx = sys.modules.get("mlx.core")  # absent when the thread never loaded MLX (a failed load, a test's stand-in)
    if mlx is not None:
        mlx.clear_streams()
