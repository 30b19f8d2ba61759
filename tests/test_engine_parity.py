"""Our engine against mlx_lm on the same files: last-position logits and greedy text, with and without LoRA."""

import json
import shutil
from dataclasses import replace

import mlx.core as mx
import pytest
from parity import mlx_lm_greedy, mlx_lm_last_logits, mlx_lm_model, mlx_lm_text, ours_greedy_text, ours_last_logits

from inference import Engine

PROMPT = "Write a post about the sea, the sky and the small boats."
NAMES = ["q4-g64-tied", "q8-g32-untied", "bf16-2shards"]


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_tokens_match_mlx_lm(tiny_models, name, with_adapter):
    model_dir, adapter_dir = tiny_models[name]
    adapter_dir = adapter_dir if with_adapter else None
    engine = Engine.load(model_dir, adapter_dir)
    ref_model, ref_tokenizer = mlx_lm_model(model_dir, adapter_dir)
    prompt = engine.render_prompt(PROMPT)
    ids = engine.tokenizer.encode(prompt)
    assert ids == ref_tokenizer.encode(prompt, add_special_tokens=False)

    diff = mx.abs(ours_last_logits(engine, ids) - mlx_lm_last_logits(ref_model, ids)).max().item()
    assert diff < 1e-4

    reference = mlx_lm_greedy(ref_model, ref_tokenizer, ids, 64)
    assert ours_greedy_text(engine, prompt, 64) == mlx_lm_text(ref_tokenizer, reference)


def test_adapter_changes_output_and_toggles_without_reload(tiny_models):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    engine = Engine.load(model_dir, adapter_dir)
    prompt = engine.render_prompt(PROMPT)
    ids = engine.tokenizer.encode(prompt)
    with_lora = ours_last_logits(engine, ids)
    engine.adapter_enabled = False
    without = ours_last_logits(engine, ids)
    base_engine = Engine.load(model_dir)
    assert mx.abs(without - ours_last_logits(base_engine, ids)).max().item() == 0.0
    assert mx.abs(with_lora - without).max().item() > 0.5  # the adapter matters enough for parity to mean something
    assert ours_greedy_text(engine, prompt, 32) == ours_greedy_text(base_engine, prompt, 32)
    engine.adapter_enabled = True
    assert ours_greedy_text(engine, prompt, 32) != ours_greedy_text(base_engine, prompt, 32)


def test_lora_multiplier_is_scale_not_scale_over_rank(tiny_models, tmp_path):
    """The original port scaled LoRA by scale / rank: an adapter rewritten with that multiplier must NOT match
    mlx_lm."""
    model_dir, adapter_dir = tiny_models["q8-g32-untied"]
    ref_model, _ = mlx_lm_model(model_dir, adapter_dir)
    wrong = shutil.copytree(adapter_dir, tmp_path / "scale-over-rank")
    config = json.loads((wrong / "adapter_config.json").read_text())
    params = config["lora_parameters"]
    params["scale"] = params["scale"] / params["rank"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))

    right_engine, wrong_engine = Engine.load(model_dir, adapter_dir), Engine.load(model_dir, wrong)
    ids = right_engine.tokenizer.encode(right_engine.render_prompt(PROMPT))
    reference = mlx_lm_last_logits(ref_model, ids)
    assert mx.abs(ours_last_logits(right_engine, ids) - reference).max().item() < 1e-4
    assert mx.abs(ours_last_logits(wrong_engine, ids) - reference).max().item() > 0.1


def test_adapter_with_explicit_keys_matches_mlx_lm(tiny_models, tmp_path):
    from fixtures import write_adapter

    model_dir, _ = tiny_models["q4-g64-tied"]
    adapter_dir = write_adapter(tmp_path / "qv-only", model_dir, num_layers=3,
                                keys=["self_attn.q_proj", "self_attn.v_proj"])
    engine = Engine.load(model_dir, adapter_dir)
    ref_model, _ = mlx_lm_model(model_dir, adapter_dir)
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    assert mx.abs(ours_last_logits(engine, ids) - mlx_lm_last_logits(ref_model, ids)).max().item() < 1e-4


def test_compiled_block_halves_match_op_by_op(tiny_models):
    """One-token steps run compiled block halves; prompts run op by op. Both give the same logits, adapter on or off."""
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    engine = Engine.load(model_dir, adapter_dir)
    model, ids = engine.model, engine.tokenizer.encode(engine.render_prompt(PROMPT))
    for use_lora in (True, False, True):  # back and forth: each switch position has its own traces
        steps = {}
        for compiled in (True, False):
            for layer in model.layers:
                layer.compile_halves = compiled
            cache = model.new_cache(2)
            logits = [model(mx.array([ids, ids[::-1]]), cache, use_lora)]
            for _ in range(6):
                logits.append(model.decode(mx.argmax(logits[-1], axis=-1)[:, None], cache, use_lora))
            steps[compiled] = mx.stack(logits)
        assert mx.abs(steps[True] - steps[False]).max().item() < 1e-5
    assert all(len(layer._compiled) == 2 for layer in model.layers)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_adapter_stored_in_half_precision_matches_mlx_lm(tiny_models, tmp_path, dtype):
    """The scale is folded into lora_b in float32: folding it in the adapter's own dtype rounds the product."""
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    half = shutil.copytree(adapter_dir, tmp_path / dtype)
    weights = mx.load(str(half / "adapters.safetensors"))
    rounded = {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()}
    mx.save_safetensors(str(half / "adapters.safetensors"), rounded)
    engine = Engine.load(model_dir, half)
    ref_model, _ = mlx_lm_model(model_dir, half)
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    assert mx.abs(ours_last_logits(engine, ids) - mlx_lm_last_logits(ref_model, ids)).max().item() < 1e-4


def test_quantization_read_from_the_shapes_as_mlx_lm_does(tiny_models, tmp_path):
    """A module quantized unlike the default, with no per-module entry in config.json: mlx_lm infers its bits and
    group size from its tensors' shapes, and so do we (a config claiming other bits is read the same way)."""
    from fixtures import FIXTURES, write_model

    spec = replace(FIXTURES["q4-g64-tied"], overrides=(("model.layers.2.mlp.down_proj", 8, 32),))
    model_dir = write_model(tmp_path / "mixed", spec)
    with_entry = Engine.load(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("quantization", "quantization_config"):
        del config[key]["model.layers.2.mlp.down_proj"]
    config["quantization"]["bits"] = 8  # the default claimed wrong too
    (model_dir / "config.json").write_text(json.dumps(config))
    engine = Engine.load(model_dir)
    ref_model, _ = mlx_lm_model(model_dir)
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    ours = ours_last_logits(engine, ids)
    assert mx.abs(ours - mlx_lm_last_logits(ref_model, ids)).max().item() < 1e-4
    assert mx.abs(ours - ours_last_logits(with_entry, ids)).max().item() == 0.0


def write_lora(adapter_dir, model_dir, modules: dict[str, tuple[int, int]], config_keys, num_layers, rank=4):
    """An mlx_lm-layout adapter on exactly ``modules`` (name -> (in, out)), its config naming ``config_keys``."""
    import numpy as np

    adapter_dir.mkdir()
    rng = np.random.default_rng(3)
    tensors = {}
    for module, (in_f, out_f) in modules.items():
        tensors[f"{module}.lora_a"] = mx.array((rng.uniform(-1, 1, (in_f, rank)) / np.sqrt(in_f)).astype(np.float32))
        tensors[f"{module}.lora_b"] = mx.array((rng.standard_normal((rank, out_f)) * 0.05).astype(np.float32))
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), tensors)
    params = {"rank": rank, "scale": 10.0, "dropout": 0.0, **({"keys": config_keys} if config_keys else {})}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}))
    return adapter_dir


def adapter_parity(model_dir, adapter_dir) -> float:
    engine = Engine.load(model_dir, adapter_dir)
    ref_model, _ = mlx_lm_model(model_dir, adapter_dir)
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    ours = ours_last_logits(engine, ids)
    engine.adapter_enabled = False
    assert mx.abs(ours - ours_last_logits(engine, ids)).max().item() > 0.05  # the adapter changes the output
    return mx.abs(ours - mlx_lm_last_logits(ref_model, ids)).max().item()


def test_adapter_with_num_layers_0_adapts_every_block_as_mlx_lm_does(tiny_models, tmp_path):
    model_dir, _ = tiny_models["q4-g64-tied"]
    config = json.loads((model_dir / "config.json").read_text())
    h = config["hidden_size"]
    modules = {f"model.layers.{i}.self_attn.o_proj": (h, h) for i in range(config["num_hidden_layers"])}
    adapter_dir = write_lora(tmp_path / "all-layers", model_dir, modules, ["self_attn.o_proj"], num_layers=0)
    assert adapter_parity(model_dir, adapter_dir) < 1e-4


def test_adapter_keys_as_full_module_paths_match_mlx_lm(tiny_models, tmp_path):
    model_dir, _ = tiny_models["q8-g32-untied"]
    config = json.loads((model_dir / "config.json").read_text())
    h, vocab = config["hidden_size"], config["vocab_size"]
    modules = {"model.layers.1.mlp.up_proj": (h, config["intermediate_size"]), "lm_head": (h, vocab)}
    adapter_dir = write_lora(tmp_path / "paths", model_dir, modules, list(modules), num_layers=1)
    assert adapter_parity(model_dir, adapter_dir) < 1e-4


def test_stop_tokens_are_chosen_as_mlx_lm_chooses_them(tiny_models, tmp_path):
    """generation_config.json's eos replaces config.json's, the tokenizer's is added; an eos named only in
    special_tokens_map.json counts."""
    from mlx_lm import load

    model_dir = shutil.copytree(tiny_models["q4-g64-tied"][0], tmp_path / "model")
    engine = Engine.load(model_dir)
    endoftext, think = engine.tokenizer.token_id("<|endoftext|>"), engine.tokenizer.token_id("<think>")
    config = json.loads((model_dir / "config.json").read_text())
    config["eos_token_id"] = endoftext
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [think]}))
    ours = Engine.load(model_dir).eos_token_ids
    assert ours == set(load(str(model_dir))[1].eos_token_ids) and endoftext not in ours and think in ours

    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": tokenizer_config.pop("eos_token")}))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (model_dir / "generation_config.json").unlink()
    ours = Engine.load(model_dir).eos_token_ids
    assert ours == set(load(str(model_dir))[1].eos_token_ids) == {endoftext, engine.tokenizer.token_id("<|im_end|>")}
