"""``EngineOptions.dequantized_rows``: a 4-bit product of many rows (a prefill) dequantizes its weight and runs dense,
with the numbers of the 4-bit product up to rounding; one-token steps keep the 4-bit product."""

from dataclasses import replace

import mlx.core as mx
import pytest
from parity import ours_greedy_text, ours_last_logits

from inference import Engine, EngineOptions
from inference.models.base import Linear

PROMPT = "Write a post about the sea, the sky and the small boats."


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
def test_a_prefill_of_dequantized_products_matches_the_4bit_one(tiny_models, monkeypatch, with_adapter):
    model_dir, adapter_dir = tiny_models["q4-g64-tied"]
    adapter_dir = adapter_dir if with_adapter else None
    options = replace(EngineOptions.for_device(), cpu_dense=False, cuda_kernels=False)
    quantized = Engine.load(model_dir, adapter_dir, options=replace(options, dequantized_rows=0))
    dequantized = Engine.load(model_dir, adapter_dir, options=replace(options, dequantized_rows=4))

    rows_seen = []  # (rows, dequantized) of every product
    call = Linear.__call__
    monkeypatch.setattr(Linear, "__call__", lambda self, x, dequantized=False: (
        rows_seen.append((x.size // x.shape[-1], dequantized)), call(self, x, dequantized))[1])
    ids = quantized.tokenizer.encode(quantized.render_prompt(PROMPT))
    reference = ours_last_logits(quantized, ids)
    rows_seen.clear()
    logits = ours_last_logits(dequantized, ids)
    assert rows_seen and all(dense == (rows >= 4) for rows, dense in rows_seen)
    assert any(dense for _, dense in rows_seen), "the prompt's products ran dequantized"
    tolerance = 1e-4 if quantized.model.dtype == mx.float32 else 0.1
    assert mx.abs(logits - reference).max().item() < tolerance
    prompt = quantized.render_prompt(PROMPT)
    assert ours_greedy_text(dequantized, prompt, 48) == ours_greedy_text(quantized, prompt, 48)


def test_dequantized_rows_must_be_a_count():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="dequantized_rows"):
            EngineOptions(dequantized_rows=bad)
