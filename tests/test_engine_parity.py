"""Our engine against mlx_lm on the same files: last-position logits and greedy text, with and without LoRA."""

import json
import shutil

import mlx.core as mx
import pytest

from inference import Engine
from parity import mlx_lm_greedy, mlx_lm_last_logits, mlx_lm_model, mlx_lm_text, ours_greedy_text, ours_last_logits

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
    """The original port scaled LoRA by scale / rank: an adapter rewritten with that multiplier must NOT match mlx_lm."""
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
    adapter_dir = write_adapter(tmp_path / "qv-only", model_dir, num_layers=3, keys=["self_attn.q_proj", "self_attn.v_proj"])
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
    mx.save_safetensors(str(half / "adapters.safetensors"), {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()})
    engine = Engine.load(model_dir, half)
    ref_model, _ = mlx_lm_model(model_dir, half)
    ids = engine.tokenizer.encode(engine.render_prompt(PROMPT))
    assert mx.abs(ours_last_logits(engine, ids) - mlx_lm_last_logits(ref_model, ids)).max().item() < 1e-4
