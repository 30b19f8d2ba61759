"""Running `python -m bobby_tui` as the user would, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, check_one_line_error: bool = False, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """`bobby-tui ARGS` in a subprocess with this test's XDG dirs (set by conftest's autouse fixture), `stdin` its
    input (default: the test's own)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BOBBY_TUI_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "bobby_tui", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, input=stdin,
    )
    if check_one_line_error:
        assert result.returncode != 0, result
        assert result.stdout == "", result.stdout
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    return result


def demo_dirs() -> tuple[Path, Path]:
    """The embedded demo model and adapter: what plain `bobby-tui post` runs."""
    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR

    return DEMO_MODEL_DIR, DEMO_ADAPTER_DIR
