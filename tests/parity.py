"""The parity harness: the same checkpoint through our engine and through mlx_lm (the oracle), in float32."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from inference import Engine, GenerationRequest, SamplingParams


def mlx_lm_model(model_dir: Path, adapter_dir: Path | None = None):
    from mlx_lm import load

    model, tokenizer = load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    model.set_dtype(mx.float32)  # scales, biases, norms, LoRA: the dtype our engine computes in on the CPU
    return model, tokenizer


def mlx_lm_last_logits(model, prompt_ids: list[int]) -> mx.array:
    return model(mx.array([prompt_ids]))[0, -1].astype(mx.float32)


def ours_last_logits(engine: Engine, prompt_ids: list[int]) -> mx.array:
    return engine.model(mx.array([prompt_ids]), engine.model.new_cache(1), engine.current_adapter)[0]


def mlx_lm_greedy(model, tokenizer, prompt_ids: list[int], n: int) -> list[int]:
    """n greedy tokens from mlx_lm with its KV cache, stopping at an eos token (not included)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt_ids]), cache=cache)[0, -1]
    out = []
    for _ in range(n):
        token = int(mx.argmax(logits))
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)[0, -1]
    return out


def mlx_lm_text(tokenizer, tokens: list[int]) -> str:
    """The text mlx_lm's generate would print for these tokens (through its own streaming detokenizer)."""
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    for token in tokens:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return detokenizer.text


def ours_greedy_text(engine: Engine, prompt: str, n: int) -> str:
    request = GenerationRequest(prompt, [SamplingParams(temperature=0.0)], max_tokens=n)
    done = [event for event in engine.generate(request) if hasattr(event, "finish_reason")]
    return done[0].text
