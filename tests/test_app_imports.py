"""The UI layer never loads MLX: only the engine thread may (MLX binds its streams to the thread that made them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_app_loads_no_mlx():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bobby_tui.app, bobby_tui.screens.composer"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    # -X importtime writes one line per imported module to stderr: "import time: self | cumulative | name"
    lines = result.stderr.splitlines()
    modules = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    assert "textual.app" in modules and "bobby_tui.screens.composer" in modules  # the listing is real
    assert [m for m in modules if m == "mlx" or m.startswith("mlx.") or m.startswith("mlx_lm")] == []
