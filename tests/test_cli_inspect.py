"""`bobby-tui inspect` on the demo model and adapter, checked against their own config files."""

import json
import re

from cli_helpers import demo_dirs, run_cli


def facts(stdout: str) -> dict[str, str]:
    """"  label   value" lines -> {label: value}; a label's continuation lines are joined with newlines."""
    out, label = {}, None
    for line in stdout.splitlines()[1:]:
        continued = re.match(r"^ {3,}(\S.*)$", line)
        labelled = re.match(r"^  (\S(?:.*?\S)?)  +(\S.*)$", line)
        if continued and label:
            out[label] += "\n" + continued.group(1)
        elif labelled:
            label = labelled.group(1)
            out[label] = labelled.group(2)
    return out


def parameter_count(c: dict) -> int:
    """Qwen3's parameters from config.json alone."""
    h, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    attn = h * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    per_layer = attn + 3 * h * inter + 2 * h + 2 * hd
    embeddings = c["vocab_size"] * h * (1 if c["tie_word_embeddings"] else 2)
    return embeddings + c["num_hidden_layers"] * per_layer + h


def dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_inspect_model():
    model_dir, _ = demo_dirs()
    config = json.loads((model_dir / "config.json").read_text())
    result = run_cli("inspect", model_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{model_dir}: model"
    assert result.stdout.rstrip().endswith("problems: none")
    f = facts(result.stdout)
    assert f["model type"] == config["model_type"]
    assert f["layers"] == str(config["num_hidden_layers"])
    assert f["hidden size"] == str(config["hidden_size"])
    assert f["vocabulary"] == str(config["vocab_size"])
    assert f["tied embeddings"].startswith("yes" if config["tie_word_embeddings"] else "no")
    assert f["parameters"].startswith(f"{parameter_count(config):,} ")
    assert f["on disk"].startswith(f"{dir_bytes(model_dir):,} bytes")
    quant = config.get("quantization")
    if quant:
        assert f"{quant['bits']}-bit, group size {quant['group_size']}: " in f["quantization"]
        assert f"layers 0-{config['num_hidden_layers'] - 1}: self_attn.q_proj" in f["quantization"]
    else:
        assert f["quantization"].startswith("not quantized: ")


def test_inspect_adapter():
    model_dir, adapter_dir = demo_dirs()
    model_config = json.loads((model_dir / "config.json").read_text())
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora = config["lora_parameters"]
    result = run_cli("inspect", adapter_dir, "--model", model_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{adapter_dir}: LoRA adapter"
    f = facts(result.stdout)
    assert f["rank"] == str(lora["rank"])
    assert float(f["scale"]) == lora["scale"]
    multiplier, note = f["effective multiplier"].split(" ", 1)
    assert float(multiplier) == lora["scale"]
    assert f"not by scale/rank = {lora['scale'] / lora['rank']:g}" in note
    layers = model_config["num_hidden_layers"]
    first = layers - config["num_layers"] if config["num_layers"] >= 0 else 0
    assert f["layers"].startswith(f"{first}-{layers - 1} " if first < layers - 1 else f"{first} ")
    keys = lora.get("keys")
    if keys:
        assert f["projections"] == ", ".join(keys)
    else:
        assert f["projections"].endswith("(all linear projections)")
    assert f["on disk"].startswith(f"{dir_bytes(adapter_dir):,} bytes")
    assert result.stdout.rstrip().endswith("problems: none")


def test_inspect_adapter_against_a_model_it_does_not_fit(tmp_path):
    model_dir, adapter_dir = demo_dirs()
    config = json.loads((model_dir / "config.json").read_text())
    other = tmp_path / "other-model"
    other.mkdir()
    config["num_hidden_layers"] += 3  # the adapter's tensors now name the wrong layers
    (other / "config.json").write_text(json.dumps(config))
    result = run_cli("inspect", adapter_dir, "--model", other)
    assert result.returncode == 1
    assert "problems (" in result.stdout and "adapters.safetensors" in result.stdout
