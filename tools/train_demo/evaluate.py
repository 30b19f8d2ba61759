"""Step 6: the numbers and samples for MODEL_CARD.md, computed by OUR engine on the shipped files."""

from __future__ import annotations

import json
import math
from pathlib import Path

from inference import Engine, GenerationRequest, SamplingParams

SAMPLE_REQUESTS = ("Write a post.", "Write a post about love.", "Write a post about computers.")


def answer_logprobs(engine: Engine, request: str, answer: str) -> list[float]:
    """log p of each answer token (and the closing <|im_end|>) after the rendered request."""
    prompt = engine.tokenizer.encode(engine.render_prompt(request))
    answer_ids = engine.tokenizer.encode(answer + "<|im_end|>")
    return engine.token_logprobs(prompt + answer_ids)[len(prompt) - 1:]


def perplexity(engine: Engine, texts: list[str], request: str = "Write a post.") -> float:
    logprobs = [lp for text in texts for lp in answer_logprobs(engine, request, text)]
    return math.exp(-sum(logprobs) / len(logprobs))


def samples(engine: Engine, requests=SAMPLE_REQUESTS, seed: int = 1, temperature: float = 0.8) -> list[dict]:
    out = []
    for i, request in enumerate(requests):
        params = SamplingParams(temperature=temperature, top_p=0.95, seed=seed + i)
        done = [e for e in engine.generate(GenerationRequest(engine.render_prompt(request), [params], max_tokens=120))
                if hasattr(e, "finish_reason")][0]
        out.append({"request": request, "seed": seed + i, "temperature": temperature, "top_p": 0.95,
                    "adapter": engine.adapter_enabled, "text": done.text})
    return out


def evaluate(model_dir: Path, adapter_dir: Path, train_texts: list[str], valid_texts: list[str],
             adapter_valid_texts: list[str]) -> dict:
    """Perplexities of answers to "Write a post." (the 4-bit model as shipped), and seeded samples."""
    engine = Engine.load(model_dir, adapter_dir)
    engine.adapter_enabled = False
    report = {"base_train_ppl": perplexity(engine, train_texts), "base_valid_ppl": perplexity(engine, valid_texts),
              "adapter_category_ppl_without_adapter": perplexity(engine, adapter_valid_texts),
              "samples_without_adapter": samples(engine)}
    engine.adapter_enabled = True
    report |= {"adapter_category_ppl_with_adapter": perplexity(engine, adapter_valid_texts),
               "samples_with_adapter": samples(engine)}
    return report


def print_report(report: dict) -> None:
    print(json.dumps(report, indent=2, ensure_ascii=False))
