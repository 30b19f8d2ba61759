"""On the CPU, projections run as dense float32 matmuls (inference/dense_cpu.py); ``cpu_dense=False`` keeps the
4-bit ones."""

from dataclasses import replace

import mlx.core as mx
import pytest
from parity import ours_greedy_text, ours_last_logits

from inference import Engine, EngineOptions
from inference.dense_cpu import dense_bytes, physical_memory_bytes, use_dense_cpu

PROMPT = "Write a post about the sea, the sky and the small boats."


def linears(engine: Engine):
    model = engine.model
    projections = [lin for layer in model.layers for p in layer.projections.values() for lin in p.linears]
    return projections + model.lm_head.linears


@pytest.mark.skipif(mx.default_device().type != mx.DeviceType.cpu, reason="the dense path is for the CPU only")
@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
def test_dense_path_on_cpu_matches_quantized(tiny_models, with_adapter):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    adapter_dir = adapter_dir if with_adapter else None
    assert physical_memory_bytes() is not None

    dense = Engine.load(model_dir, adapter_dir)
    assert all(lin.spec is None and lin.weight.dtype == mx.float32 for lin in linears(dense))
    embed = dense.model.embed_tokens
    assert embed.spec is not None and embed.spec.bits == 4  # the table stays quantized; the tied head got a copy
    assert dense.model.lm_head.linears[0] is not embed

    quantized = Engine.load(model_dir, adapter_dir, options=replace(EngineOptions.for_device(), cpu_dense=False))
    assert all(lin.spec is not None and lin.spec.bits == 4 for lin in linears(quantized))

    ids = dense.tokenizer.encode(dense.render_prompt(PROMPT))
    assert mx.abs(ours_last_logits(dense, ids) - ours_last_logits(quantized, ids)).max().item() < 1e-4
    prompt = dense.render_prompt(PROMPT)
    assert ours_greedy_text(dense, prompt, 64) == ours_greedy_text(quantized, prompt, 64)


def test_dense_path_respects_the_memory_budget(tiny_models):
    model_dir, _ = tiny_models["q4-g64-tied"]
    engine = Engine.load(model_dir, options=replace(EngineOptions.for_device(), cpu_dense=False))
    needed = dense_bytes(engine.model)
    assert not use_dense_cpu(engine.model, budget_bytes=needed - 1)
    assert all(lin.spec is not None for lin in linears(engine))
    if mx.default_device().type == mx.DeviceType.cpu:
        assert use_dense_cpu(engine.model, budget_bytes=needed)
        assert all(lin.spec is None for lin in linears(engine))
