"""In-process checks of the CLI's small parts (no model, no subprocess)."""

import io
import os
import re
import shutil
import subprocess

import pytest
from cli_helpers import REPO

from bobby_tui.cli import ProgressBar, UsageError, _count_and_prompt, main
from bobby_tui.config import Config
from bobby_tui.inspect_report import _ranges


@pytest.mark.parametrize("count, words, expected", [
    (None, [], (1, "Write a post.")),
    (3, [], (3, "Write a post.")),
    (None, ["1984"], (1, "1984")),  # one argument is always the prompt
    (None, ["3", "reasons to ship"], (3, "reasons to ship")),  # COUNT PROMPT
    (2, ["3 reasons to ship"], (2, "3 reasons to ship")),
    (None, ["  Write about tea\n\n  twice  "], (1, "  Write about tea\n\n  twice  ")),  # exactly as given
])
def test_count_and_prompt(count, words, expected):
    assert _count_and_prompt(count, words, Config()) == expected


@pytest.mark.parametrize("count, words, message", [
    (None, ["3", "reasons", "to", "ship"], "PROMPT must be one argument"),
    (None, ["about", "tea"], "PROMPT must be one argument"),
    (2, ["3", "reasons"], "COUNT is given twice"),
    (None, ["0", "x"], "COUNT must be in [1, 64]"),
    (None, ["1984", "x"], "COUNT must be in [1, 64]"),
    (None, [""], "PROMPT is empty"),
    (None, [" \n "], "PROMPT is only whitespace"),
    (None, ["caf\udce9"], "PROMPT is not valid UTF-8"),
])
def test_count_and_prompt_refusals(count, words, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        _count_and_prompt(count, words, Config())


def test_an_empty_default_prompt_names_the_config_key():
    with pytest.raises(UsageError, match="default_prompt in .*config.toml is empty"):
        _count_and_prompt(None, [], Config(default_prompt=""))


def test_progress_bar_redraws_once_per_percent_and_clears_its_line():
    from inference import LoadProgress

    stream = io.StringIO()
    bar = ProgressBar("loading demo", stream)
    for done in (0, 1, 2, 500, 1000):
        bar.update(LoadProgress(done, 1000))
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    assert [f[-4:].strip() for f in frames[:-1]] == ["0%", "50%", "100%"]
    assert frames[-1] == "\033[K"
    assert frames[-2] == "loading demo  [" + "#" * 30 + "] 100%"


def test_ranges_fold_consecutive_layers():
    assert _ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"
    assert _ranges([3]) == "3"


def test_stream_with_several_drafts_is_a_usage_error(capsys):
    assert main(["post", "-n", "2", "--stream"]) == 2
    assert "--stream" in capsys.readouterr().err


def test_mlx_kernel_cache_goes_to_the_user_cache_dir_unless_set(monkeypatch, isolated_user_dirs):
    from bobby_tui.paths import keep_compiled_kernels

    monkeypatch.delenv("MLX_PTX_CACHE_DIR", raising=False)
    keep_compiled_kernels()
    assert os.environ["MLX_PTX_CACHE_DIR"] == str(isolated_user_dirs / "xdg-cache" / "bobby-tui" / "mlx-kernels")
    monkeypatch.setenv("MLX_PTX_CACHE_DIR", "/opt/kernels")
    keep_compiled_kernels()
    assert os.environ["MLX_PTX_CACHE_DIR"] == "/opt/kernels"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_the_app_alone_and_make_test_the_test_extras(tmp_path):
    """What the two targets would do in a clean clone (make -n: nothing is installed)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)

    def planned(target: str) -> list[str]:
        result = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]

    assert planned("run") == [".venv/bin/python -m pip install -q -e ."]
    assert planned("test") == ['.venv/bin/python -m pip install -q -e ".[test]"']
    # a venv made for the app alone still gets the test extras for `make test`
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / ".venv" / ".installed-app").touch()
    assert planned("run") == [] and planned("test") == ['.venv/bin/python -m pip install -q -e ".[test]"']
