"""The benchmarks' checkpoints (tools/bench/checkpoints.py at the bench's settings: the real Qwen3 vocabulary and
tokenizer, plain weights, 4-bit g64, the rank-8 adapter): our engine and mlx_lm both load them and decode, and a
reusable write is kept only once complete. The tests' own checkpoints come from the same writer (tests/fixtures.py)
and are covered by the parity tests."""

import dataclasses

import mlx.core as mx

from inference import DraftDone, Engine, GenerationRequest, SamplingParams
from tools.bench.checkpoints import COMPLETE_MARKER, SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint

SHAPE = dataclasses.replace(SHAPES["tiny"], num_hidden_layers=2)


def test_bench_checkpoint_loads_in_both_engines(tmp_path):
    from mlx_lm import load

    model_dir = write_checkpoint(tmp_path / "tiny", SHAPE, tokenizer_dir=qwen_tokenizer_dir())
    adapter_dir = write_adapter(tmp_path / "tiny-lora", model_dir)

    engine = Engine.load(model_dir, adapter_dir)
    engine.eos_token_ids = set()  # random weights may pick <|im_end|> at once
    request = GenerationRequest(engine.render_prompt("Hello there"), [SamplingParams(temperature=0.0)], max_tokens=4)
    (done,) = [e for e in engine.generate(request) if isinstance(e, DraftDone)]
    assert done.stats.generated_tokens == 4

    model, _ = load(str(model_dir), adapter_path=str(adapter_dir))  # strict: every name and shape as mlx_lm expects
    logits = model(mx.array([[9707, 11, 1879]]))
    assert logits.shape == (1, 3, SHAPE.vocab_size)


def test_reusable_write_is_kept_only_when_complete(tmp_path):
    model_dir = write_checkpoint(tmp_path / "tiny", SHAPE, reuse=True)
    weights = model_dir / "model.safetensors"
    assert (model_dir / COMPLETE_MARKER).exists()
    written = weights.stat().st_mtime_ns
    write_checkpoint(model_dir, SHAPE, reuse=True)
    assert weights.stat().st_mtime_ns == written  # kept

    (model_dir / COMPLETE_MARKER).unlink()  # as if the first write had been interrupted
    write_checkpoint(model_dir, SHAPE, reuse=True)
    assert weights.stat().st_mtime_ns != written and (model_dir / COMPLETE_MARKER).exists()
