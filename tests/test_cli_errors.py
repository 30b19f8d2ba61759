"""Every error path of the CLI: one line on stderr, no traceback, the documented exit code."""

import json
import shutil
import struct

from cli_helpers import demo_dirs, run_cli

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
