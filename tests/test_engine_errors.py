"""Bad input: each case raises one typed error whose one-line message names the file and the problem."""

import json
import shutil
import struct

import mlx.core as mx
import pytest

from inference import (
    AdapterError,
    CheckpointError,
    ConfigError,
    Engine,
    InferenceError,
    TokenizerError,
    inspect_adapter,
    inspect_model,
)


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


def test_quantized_tensors_whose_shapes_fit_no_spec_are_refused(model_copy):
    model, _ = model_copy
    path = model / "model.safetensors"
    weights = mx.load(str(path))
    name = "model.layers.0.mlp.up_proj.scales"
    weights[name] = weights[name][:, :1]
    mx.save_safetensors(str(path), weights)
    err = load_error(model)
    assert isinstance(err, CheckpointError) and "model.layers.0.mlp.up_proj." in str(err) and "shape" in str(err)


def test_adapter_whose_tensors_do_not_fit(model_copy):
    model, adapter = model_copy
    weights = mx.load(str(adapter / "adapters.safetensors"))
    name = next(n for n in weights if n.endswith("q_proj.lora_a"))
    weights[name] = weights[name][:, :4]
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    err = load_error(model, adapter)
    assert isinstance(err, AdapterError)
    assert "adapters.safetensors" in str(err) and name in str(err) and "shape" in str(err)


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
    assert inspect_model(model).problems == []
    assert inspect_adapter(adapter, model).problems == []
    weights = mx.load(str(model / "model.safetensors"))
    del weights["model.norm.weight"]
    weights["model.layers.0.self_attn.q_proj.bias"] = mx.zeros((128,))
    mx.save_safetensors(str(model / "model.safetensors"), weights)
    problems = inspect_model(model).problems
    assert any("'model.norm.weight' is missing" in p for p in problems)
    assert any("'model.layers.0.self_attn.q_proj.bias' is not used by the model" in p for p in problems)


def mlx_lm_refuses(model_dir) -> bool:
    from mlx_lm import load

    try:
        load(str(model_dir))
    except ValueError:
        return True
    return False


def add_tensors(model_dir, **tensors):
    path = model_dir / "model.safetensors"
    weights = mx.load(str(path))
    weights.update(tensors)
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def test_attention_biases_the_model_has_no_place_for_are_refused_as_mlx_lm_does(model_copy):
    model, _ = model_copy
    add_tensors(model, **{f"model.layers.1.self_attn.{p}_proj.bias": mx.ones((n,)) for p, n in
                          (("q", 128), ("k", 64), ("v", 64))})
    err = load_error(model)
    assert isinstance(err, CheckpointError)
    assert "'model.layers.1.self_attn.k_proj.bias' is not used by the model" in str(err)
    assert mlx_lm_refuses(model)


def test_config_with_fewer_layers_than_the_checkpoint_is_refused_as_mlx_lm_does(model_copy):
    model, _ = model_copy
    rewrite_config(model, num_hidden_layers=3)
    err = load_error(model)
    assert "model.layers.3." in str(err) and "config.json says 3 layers" in str(err)
    assert mlx_lm_refuses(model)


def test_rotary_frequencies_are_skipped_and_listed(model_copy):
    model, _ = model_copy
    add_tensors(model, **{"model.layers.0.self_attn.rotary_emb.inv_freq": mx.ones((16,))})
    facts = inspect_model(model)
    assert facts.problems == [] and facts.skipped == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    Engine.load(model)


def test_header_length_field_itself_truncated(tmp_path):
    from inference.safetensors_reader import read_header

    path = tmp_path / "tiny.safetensors"
    path.write_bytes(struct.pack("<I", 7))
    with pytest.raises(CheckpointError, match="too short"):
        read_header(path)


def test_inspect_lists_what_stops_a_generation_on_the_tokenizer_side(model_copy):
    model, _ = model_copy
    path = model / "tokenizer_config.json"
    config = json.loads(path.read_text())
    del config["chat_template"]
    path.write_text(json.dumps(config))
    assert any("no chat template" in p for p in inspect_model(model).problems)
    (model / "tokenizer.json").unlink()
    problems = inspect_model(model).problems
    assert any("tokenizer.json" in p and "not found" in p for p in problems)


def test_load_reports_reading_then_preparing(tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    updates = []
    Engine.load(model_dir, adapter_dir, progress=updates.append)
    phases = [u.phase for u in updates]
    reading, preparing = phases.count("reading"), phases.count("preparing")
    assert phases == ["reading"] * reading + ["preparing"] * preparing and reading > 1
    assert updates[reading - 1].done == updates[reading - 1].total
    assert [u.done for u in updates[reading:]] == list(range(updates[-1].total + 1)) and updates[-1].total >= 2


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", 7])
def test_index_naming_a_shard_outside_the_model_directory_is_refused(tiny_models, tmp_path, shard):
    model = shutil.copytree(tiny_models["bf16-2shards"][0], tmp_path / "sharded")
    (tmp_path / "outside.safetensors").write_bytes(b"secret bytes, never to be opened")
    index = model / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = shard
    index.write_text(json.dumps(data))
    err = load_error(model)
    assert isinstance(err, CheckpointError) and "model.safetensors.index.json" in str(err)
    assert "not a file name inside the model directory" in str(err) and "secret" not in str(err)


def test_a_fifo_in_place_of_a_weights_file_is_refused_without_blocking(model_copy):
    import os

    model, _ = model_copy
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    err = load_error(model)
    assert "config.json" in str(err) and "not a regular file" in str(err)
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    err = load_error(model)
    assert "model.safetensors" in str(err) and "not a regular file" in str(err)


def test_a_tokenizer_with_more_ids_than_embedding_rows_is_refused(tiny_models, tmp_path):
    """The fixture's 384-row model with a 64-row config: tokens past row 63 would be read out of bounds."""
    from fixtures import FIXTURES, write_model

    model = write_model(tmp_path / "small-vocab", FIXTURES["bf16-2shards"])
    rewrite_config(model, vocab_size=64)
    for shard in model.glob("model-*.safetensors"):  # the tables cut to 64 rows, so only the tokenizer disagrees
        weights = mx.load(str(shard))
        mx.save_safetensors(str(shard), {k: v[:64] if k.endswith(("embed_tokens.weight", "lm_head.weight")) else v
                                         for k, v in weights.items()})
    assert inspect_model(model).problems == [
        f"{model / 'tokenizer.json'}: has 384 tokens, more than the model's 64 embedding rows "
        "(vocab_size in config.json)"]
    err = load_error(model)
    assert isinstance(err, TokenizerError) and "more than the model's 64 embedding rows" in str(err)


@pytest.mark.parametrize("changes, message", [
    ({"rope_theta": None}, "missing required key 'rope_theta'"),  # mlx_lm refuses it too; no silent 1e6
    ({"rms_norm_eps": None}, "missing required key 'rms_norm_eps'"),
    ({"head_dim": None}, "missing required key 'head_dim'"),
    ({"hidden_size": 256.9}, "'hidden_size' must be an integer (got 256.9)"),
    ({"num_hidden_layers": "4"}, "'num_hidden_layers' must be an integer (got '4')"),
    ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false (got 'false')"),
    ({"rms_norm_eps": 0}, "'rms_norm_eps' must be a finite number > 0 (got 0)"),
    ({"rope_theta": -1.0}, "'rope_theta' must be a finite number > 0 (got -1.0)"),
    ({"num_key_value_heads": 3}, "num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
    ({"use_sliding_window": True}, "use_sliding_window: true is not supported"),
    ({"quantization": {"bits": 4, "group_size": 16, "mode": "nvfp4"}}, "quantization mode 'nvfp4' is not supported"),
])
def test_config_values_are_read_strictly(model_copy, changes, message):
    model, _ = model_copy
    path = model / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    err = load_error(model)
    assert isinstance(err, ConfigError) and str(path) in str(err) and message in str(err)


@pytest.mark.parametrize("where, key, value, message", [
    ("lora_parameters", "scale", float("nan"), "'scale' must be a finite number (got nan)"),
    ("lora_parameters", "scale", "20", "'scale' must be a finite number (got '20')"),
    ("lora_parameters", "rank", 0, "'rank' must be at least 1 (got 0)"),
    ("lora_parameters", "keys", "self_attn.q_proj", "'keys' must be a list of strings (got 'self_attn.q_proj')"),
    (None, "num_layers", 2.5, "'num_layers' must be an integer (got 2.5)"),
])
def test_adapter_config_values_are_read_strictly(model_copy, where, key, value, message):
    model, adapter = model_copy
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    (config[where] if where else config)[key] = value
    path.write_text(json.dumps(config))  # NaN is written as JSON's NaN, which Python's reader accepts
    err = load_error(model, adapter)
    assert isinstance(err, AdapterError) and str(path) in str(err) and message in str(err)


def test_a_huge_layer_count_is_one_problem_found_at_once(model_copy):
    import time

    model, _ = model_copy
    rewrite_config(model, num_hidden_layers=10**6)
    started = time.perf_counter()
    problems = inspect_model(model).problems
    assert problems == [
        f"{model / 'config.json'}: num_hidden_layers is 1000000, the checkpoint holds tensors of 4 layers"]
    assert time.perf_counter() - started < 5
    assert "num_hidden_layers is 1000000" in str(load_error(model))


def _poison(path, name: str, value: float = float("nan")) -> None:
    """Rewrite one tensor of a safetensors file with ``value`` in its first element."""
    tensors = dict(mx.load(str(path)))
    flat = tensors[name].reshape(-1)
    flat[0] = value
    tensors[name] = flat.reshape(tensors[name].shape)
    mx.save_safetensors(str(path), tensors)


@pytest.mark.parametrize(("tensor", "value"), [
    ("model.layers.1.post_attention_layernorm.weight", float("nan")),
    ("model.layers.0.self_attn.q_proj.scales", float("inf")),
    ("model.norm.weight", float("-inf")),
])
def test_non_finite_norms_and_scales_are_refused_at_load(model_copy, tensor, value):
    model_dir, _ = model_copy
    _poison(model_dir / "model.safetensors", tensor, value)
    err = load_error(model_dir)
    assert isinstance(err, CheckpointError)
    assert str(err) == (f"{model_dir / 'model.safetensors'}: tensor {tensor!r} holds NaN or infinity: the checkpoint "
                        "is broken")


def test_a_non_finite_dense_matrix_is_refused_at_load(tiny_models, tmp_path):
    """Issue 13 item 29: a bf16 checkpoint's matrices are checked too, not only its norms."""
    model_dir = shutil.copytree(tiny_models["bf16-2shards"][0], tmp_path / "bf16")
    tensor = "model.layers.1.mlp.down_proj.weight"
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    _poison(model_dir / index[tensor], tensor, float("nan"))
    err = load_error(model_dir)
    assert isinstance(err, CheckpointError)
    assert str(err) == f"{model_dir / index[tensor]}: tensor {tensor!r} holds NaN or infinity: the checkpoint is broken"


def test_a_non_finite_adapter_is_refused_and_leaves_the_engine_as_it_was(model_copy):
    model_dir, adapter_dir = model_copy
    engine = Engine.load(model_dir, adapter_dir)
    broken = shutil.copytree(adapter_dir, adapter_dir.parent / "broken")
    _poison(broken / "adapters.safetensors", "model.layers.3.mlp.down_proj.lora_b")
    with pytest.raises(AdapterError, match="adapters.safetensors: holds NaN or infinity: the adapter is broken"):
        engine.load_adapter(adapter_dir.name, broken)
    assert engine.adapter_names == (adapter_dir.name,)
    assert load_error(model_dir, broken).problem == "holds NaN or infinity: the adapter is broken"
    prompt = engine.render_prompt("hi")
    ids = engine.tokenizer.encode(prompt)
    logits = engine.model(mx.array([ids]), engine.model.new_cache(1), adapter_dir.name)
    assert mx.all(mx.isfinite(logits)).item()
