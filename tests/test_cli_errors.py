"""Every error path of the CLI: one line on stderr, no traceback, the documented exit code."""

import dataclasses
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time

import pytest
from cli_helpers import REPO, demo_dirs, run_cli

from bobby_tui.paths import config_path


def copy_with_corrupt_weights(model_dir, dest):
    """The model's config and tokenizer, with a safetensors file whose header runs past its end."""
    dest.mkdir()
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dest / f.name)
    (dest / "model.safetensors").write_bytes(struct.pack("<Q", 9999) + b'{"a": 1}')
    return dest


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-such-model"
    result = run_cli("post", "--model", missing, "--no-history", check_one_line_error=True)
    assert result.returncode == 1 and str(missing) in result.stderr


def test_corrupt_safetensors(tmp_path):
    model = copy_with_corrupt_weights(demo_dirs()[0], tmp_path / "corrupt")
    result = run_cli("post", "--model", model, "--no-history", check_one_line_error=True)
    assert result.returncode == 1 and str(model / "model.safetensors") in result.stderr
    inspected = run_cli("inspect", model)
    assert inspected.returncode == 1
    assert "problems (1):" in inspected.stdout and "model.safetensors" in inspected.stdout


def test_bad_adapter(tmp_path):
    adapter = tmp_path / "bad-adapter"
    shutil.copytree(demo_dirs()[1], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_parameters"]["alpha"] = config["lora_parameters"].pop("scale")  # the PEFT spelling
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run_cli("post", "--model", demo_dirs()[0], "--adapter", adapter, "--no-history",
                     check_one_line_error=True)
    assert result.returncode == 1 and str(adapter / "adapter_config.json") in result.stderr
    assert run_cli("inspect", adapter).returncode == 1


def test_malformed_config_stops_post_with_its_line_and_column():
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text('theme = "bobby-dark"\n[sampling]\ntemperature = = 1\n')
    result = run_cli("post", "--no-history", check_one_line_error=True)
    assert result.returncode == 1 and f"{config_path()}:3:15:" in result.stderr


def test_inspect_a_directory_that_is_neither(tmp_path):
    result = run_cli("inspect", tmp_path, check_one_line_error=True)
    assert result.returncode == 1 and str(tmp_path) in result.stderr
    result = run_cli("inspect", tmp_path / "missing", check_one_line_error=True)
    assert result.returncode == 1


def test_the_tui_reports_a_missing_model_in_one_line(tmp_path):
    missing = tmp_path / "gone"
    result = run_cli("--model", missing, check_one_line_error=True)
    assert result.returncode == 1 and str(missing) in result.stderr


def copy_of_the_demo_config(dest, **overrides):
    """The demo model's config and tokenizer (no weights: the checks below refuse before anything is loaded)."""
    dest.mkdir()
    for f in demo_dirs()[0].iterdir():
        if f.suffix == ".json" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dest / f.name)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **overrides}))
    return dest


# Each: the arguments, the exit code, and words the one line must hold (the range comes from SAMPLING_LIMITS).
BAD_INPUTS = [
    (["post", "x", "--max-tokens", "1" + "0" * 30], 2, ["--max-tokens", "max_position_embeddings", "40,960"]),
    (["post", "x", "--max-tokens", "10**30"], 2, ["--max-tokens", "must be an integer >= 1", "'10**30'"]),
    (["post", "x", "--seed", "-1"], 2, ["--seed", "must be in [0, 9223372036854775808)", "-1"]),
    (["post", "x", "--seed", str(2**63 - 1), "-n", "2"], 2, ["--seed", "below 2**63"]),
    (["post", "x", "--top-k", "1e9"], 2, ["--top-k", "must be an integer >= 0", "'1e9'"]),
    (["post", "x", "--temperature", "nan"], 2, ["--temperature", "finite"]),
    (["post", "x", "--temperature", "1e999"], 2, ["--temperature", "finite"]),
    (["post", "x", "--temperature", "101"], 2, ["--temperature", "in [0, 100]"]),
    (["post", "x", "--top-p", "0"], 2, ["--top-p", "in (0, 1]"]),
    (["post", "x", "-n", "65"], 2, ["--count", "in [1, 64]"]),
    (["post", "x", "-n", "1000000"], 2, ["--count", "in [1, 64]"]),
    (["post", "1000000", "x"], 2, ["COUNT", "in [1, 64]"]),
    (["post", "3", "reasons", "to", "ship"], 2, ["PROMPT must be one argument", "quote"]),
    (["post", "x" * 16_001], 2, ["16,001 characters", "at most 16,000"]),
    (["post", "x" * 8_000, "--system", "y" * 8_001], 2, ["16,001 characters", "at most 16,000"]),
    (["post", "\udcff"], 2, ["PROMPT is not valid UTF-8"]),
    (["history", "--limit", "1" + "0" * 30], 2, ["--limit", "must be in [1, 9223372036854775807]"]),
    (["history", "--limit", "many"], 2, ["--limit", "must be an integer"]),
    (["history", "--search", "caf\udcff"], 2, ["--search is not valid UTF-8"]),
    (["favorite", "1" + "0" * 30], 2, ["ID", "must be in [1, 9223372036854775807]"]),
    (["favorite", "1.5"], 2, ["ID", "must be an integer"]),
]


@pytest.mark.parametrize("args, code, words", BAD_INPUTS, ids=[" ".join(a)[:40] for a, _, _ in BAD_INPUTS])
def test_out_of_range_and_odd_values_get_their_own_one_line_message(args, code, words):
    result = run_cli(*args, *(["--no-history"] if args[0] == "post" else []), check_one_line_error=True)
    assert result.returncode == code, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "unexpected" not in result.stderr and "internal error" not in result.stderr


def test_configured_sampling_out_of_range_names_the_config_key():
    """A bad configured value is one warning naming the file and key, and that setting keeps its default (the
    config's rule for every key), with the range the engine accepts."""
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text("[sampling]\ntemperature = 150.0\n")
    result = run_cli("post", "x", "--no-history", "--json", "--max-tokens", 4)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"bobby-tui: warning: {config_path()}: 'sampling.temperature' must be in [0, 100] (got 150.0)"
    ]
    from bobby_tui.config import Sampling

    assert json.loads(result.stdout.splitlines()[0])["temperature"] == Sampling().temperature


def test_count_beyond_what_memory_holds_names_the_limit(tmp_path):
    from bobby_tui.composer import available_memory, kv_cache_bytes
    from inference import read_model_args

    demo = read_model_args(demo_dirs()[0])
    per_layer = kv_cache_bytes(demo, 1 + 64 + 280) / demo.num_hidden_layers  # prompt "x", template, max_tokens
    memory = available_memory()
    # layers enough that one draft's KV cache is twice the memory: not even one draft fits
    model = copy_of_the_demo_config(tmp_path / "deep", num_hidden_layers=int(2 * memory / per_layer))
    result = run_cli("post", "-n", 2, "x", "--model", model, "--no-history", check_one_line_error=True)
    assert result.returncode == 1 and str(model / "config.json") in result.stderr
    assert "of KV cache" in result.stderr and "at most 0 drafts" in result.stderr
    # one draft takes a twentieth of the memory: a few fit, 64 do not
    model = copy_of_the_demo_config(tmp_path / "deeper", num_hidden_layers=int(memory / 20 / per_layer))
    result = run_cli("post", "-n", 64, "x", "--model", model, "--no-history", check_one_line_error=True)
    assert result.returncode == 2 and "64 drafts need" in result.stderr and "available: at most" in result.stderr


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_a_huge_count_is_refused_in_seconds_under_a_memory_limit():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    result = subprocess.run(["prlimit", f"--as={1 << 30}", sys.executable, "-m", "bobby_tui", "post", "1000000", "x"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "at most 64" not in result.stdout
    assert "COUNT must be in [1, 64]" in result.stderr and time.monotonic() - started < 30


def test_drafts_the_history_refuses_are_still_printed_with_one_line_and_exit_3():
    from bobby_tui.paths import db_path
    from bobby_tui.storage import Store

    with Store(db_path()):
        pass
    with sqlite3.connect(db_path()) as db:  # what a full disk looks like to the insert
        db.execute("CREATE TRIGGER full BEFORE INSERT ON generations BEGIN "
                   "SELECT RAISE(ABORT, 'database or disk is full'); END")
    result = run_cli("post", "-n", 2, "x", "--json", "--max-tokens", 4)
    assert result.returncode == 3
    drafts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(drafts) == 2 and all(d["id"] is None and d["text"] for d in drafts)
    (line,) = result.stderr.splitlines()
    assert "not saved to the history" in line and "database or disk is full" in line and str(db_path()) in line


def _post_in_process(monkeypatch, capsys, spoil) -> tuple[int, str, str]:
    """main(["post", ...]) on the demo model, with `spoil()` run once the model is loaded (the store is open)."""
    from bobby_tui import cli

    load = cli._load_engine

    def load_then_spoil(*args):
        engine = load(*args)
        spoil()
        return engine

    monkeypatch.setattr(cli, "_load_engine", load_then_spoil)
    code = cli.main(["post", "-n", "2", "x", "--max-tokens", "4", "--temperature", "0"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_history_removed_while_generating_is_reported_not_written_into_the_void(monkeypatch, capsys):
    from bobby_tui.paths import db_path

    code, out, err = _post_in_process(monkeypatch, capsys, lambda: [
        p.unlink() for p in db_path().parent.iterdir() if p.name.startswith(db_path().name)])
    assert code == 3 and out.count("── draft ") == 2
    (line,) = err.splitlines()
    assert "not saved" in line and "removed or replaced" in line


def test_a_value_sqlite_cannot_store_keeps_the_drafts(monkeypatch, capsys):
    from bobby_tui import composer

    to_record = composer.to_record
    monkeypatch.setattr(composer, "to_record", lambda *a, **kw: dataclasses.replace(to_record(*a, **kw), seed=2**64))
    code, out, err = _post_in_process(monkeypatch, capsys, lambda: None)
    assert code == 3 and out.count("── draft ") == 2
    (line,) = err.splitlines()
    assert "not saved to the history" in line and "too large" in line
