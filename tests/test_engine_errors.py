"""Bad input: each case raises one typed error whose one-line message names the file and the problem."""

import json
import shutil
import struct

import mlx.core as mx
import pytest

from inference import AdapterError, CheckpointError, ConfigError, Engine, InferenceError, TokenizerError
from inference.lora import check_adapter_dir
from inference.io.checkpoint import check_model_dir


@pytest.fixture
def model_copy(tiny_models, tmp_path):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    return shutil.copytree(model_dir, tmp_path / "model"), shutil.copytree(adapter_dir, tmp_path / "adapter")


def load_error(model_dir, adapter_dir=None) -> InferenceError:
    with pytest.raises(InferenceError) as info:
        Engine.load(model_dir, adapter_dir)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def rewrite_config(model_dir, **changes):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_model_directory(tmp_path):
    err = load_error(tmp_path / "nope")
    assert isinstance(err, CheckpointError) and "nope" in str(err) and "not found" in str(err)


def test_missing_weights_file(model_copy):
    model, _ = model_copy
    (model / "model.safetensors").unlink()
    err = load_error(model)
    assert isinstance(err, CheckpointError) and "no model.safetensors" in str(err)


def test_missing_shard_named_in_index(tiny_models, tmp_path):
    model = shutil.copytree(tiny_models["bf16-2shards"][0], tmp_path / "sharded")
    (model / "model-00002-of-00002.safetensors").unlink()
    err = load_error(model)
    assert "model-00002-of-00002.safetensors" in str(err) and "not found" in str(err)


def test_truncated_file_header_longer_than_file(model_copy):
    model, _ = model_copy
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:100])
    err = load_error(model)
    assert isinstance(err, CheckpointError)
    assert str(path) in str(err) and "header length" in str(err) and "past the end of the file (100 bytes)" in str(err)


def test_truncated_data_offsets_past_end(model_copy):
    model, _ = model_copy
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    err = load_error(model)
    assert str(path) in str(err) and "data offsets" in str(err) and "past the end" in str(err)


def test_header_is_not_json(model_copy):
    model, _ = model_copy
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"#!@?"
    path.write_bytes(bytes(data))
    err = load_error(model)
    assert str(path) in str(err) and "not valid JSON" in str(err)


def test_config_json_malformed(model_copy):
    model, _ = model_copy
    (model / "config.json").write_text('{"model_type": "qwen3",')
    err = load_error(model)
    assert isinstance(err, ConfigError) and "config.json" in str(err) and "not valid JSON" in str(err)


def test_unknown_model_type(model_copy):
    model, _ = model_copy
    rewrite_config(model, model_type="llama")
    err = load_error(model)
    assert isinstance(err, ConfigError) and "unknown model_type 'llama'" in str(err)


def test_shape_that_does_not_fit_config(model_copy):
    model, _ = model_copy
    rewrite_config(model, intermediate_size=320)
    err = load_error(model)
    assert isinstance(err, CheckpointError)
    assert "model.safetensors" in str(err) and "mlp.gate_proj.weight" in str(err) and "config.json implies" in str(err)


def test_dtype_that_does_not_fit_config(model_copy):
    model, _ = model_copy
    path = model / "model.safetensors"
    weights = mx.load(str(path))
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(mx.int32)
    mx.save_safetensors(str(path), weights)
    err = load_error(model)
    assert "'model.norm.weight' has dtype I32" in str(err)


def test_quantization_claimed_but_weights_dense(model_copy):
    model, _ = model_copy
    rewrite_config(model, quantization={"group_size": 64, "bits": 8}, quantization_config={"group_size": 64, "bits": 8})
    err = load_error(model)
    assert "dtype" in str(err) or "shape" in str(err)


def test_adapter_whose_tensors_do_not_fit(model_copy):
    model, adapter = model_copy
    weights = mx.load(str(adapter / "adapters.safetensors"))
    name = next(n for n in weights if n.endswith("q_proj.lora_a"))
    weights[name] = weights[name][:, :4]
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    err = load_error(model, adapter)
    assert isinstance(err, AdapterError) and "adapters.safetensors" in str(err) and name in str(err) and "shape" in str(err)


def test_adapter_naming_layers_the_model_does_not_have(model_copy):
    model, adapter = model_copy
    weights = mx.load(str(adapter / "adapters.safetensors"))
    weights["model.layers.7.mlp.up_proj.lora_a"] = weights["model.layers.3.mlp.up_proj.lora_a"]
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    err = load_error(model, adapter)
    assert isinstance(err, AdapterError) and "model.layers.7.mlp.up_proj.lora_a" in str(err) and "4 layers" in str(err)


def test_adapter_config_with_alpha_instead_of_scale(model_copy):
    model, adapter = model_copy
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["lora_parameters"]["alpha"] = config["lora_parameters"].pop("scale")
    path.write_text(json.dumps(config))
    err = load_error(model, adapter)
    assert isinstance(err, AdapterError) and "adapter_config.json" in str(err) and "'alpha'" in str(err)


def test_missing_adapter_directory(model_copy, tmp_path):
    model, _ = model_copy
    err = load_error(model, tmp_path / "no-adapter")
    assert isinstance(err, AdapterError) and "no-adapter" in str(err)


def test_missing_tokenizer(model_copy):
    model, _ = model_copy
    (model / "tokenizer.json").unlink()
    err = load_error(model)
    assert isinstance(err, TokenizerError) and "tokenizer.json" in str(err) and "not found" in str(err)


def test_check_functions_list_every_problem(model_copy):
    model, adapter = model_copy
    assert check_model_dir(model) == []
    assert check_adapter_dir(adapter) == []
    weights = mx.load(str(model / "model.safetensors"))
    del weights["model.norm.weight"]
    weights["model.layers.0.rotary_emb.inv_freq"] = mx.zeros((16,))
    mx.save_safetensors(str(model / "model.safetensors"), weights)
    problems = check_model_dir(model)
    assert any("'model.norm.weight' is missing" in p for p in problems)
    assert any("unexpected tensor 'model.layers.0.rotary_emb.inv_freq'" in p for p in problems)


def test_header_length_field_itself_truncated(tmp_path):
    from inference.safetensors_reader import read_header

    path = tmp_path / "tiny.safetensors"
    path.write_bytes(struct.pack("<I", 7))
    with pytest.raises(CheckpointError, match="too short"):
        read_header(path)
