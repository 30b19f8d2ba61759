"""Decode step time of the server's batch without HTTP: K requests with their own prompts (left-padded rows, as a
server's clients make) against one request with K drafts of one prompt (rows at one position), both through
``inference.batching.BatchGenerator`` on this thread. What the load benchmark's per-client rate loses beyond
this is the HTTP layer's; what the K prompts lose against the one prompt is the padded batch's.

With ``--arrivals``: K requests of prompts never seen submitted at once (as K clients arriving together), after a
request alone put its prompt in the prompt cache: the steps until every one has its first token, their time to
first token p50 / p95 and the longest step: the server's time to first token without HTTP.

    python -m tools.bench.batch_steps --model .bench-cache/tiny --rows 1,8,32
    python -m tools.bench.batch_steps --model .bench-cache/8B --rows 1,4,8,16,32 --steps 64
    python -m tools.bench.batch_steps --model .bench-cache/8B --rows 1,8,32 --arrivals

A checkpoint with random weights (``tools.bench.checkpoints``; ``--model`` defaults to the tiny shape's, written
if missing): its rows almost never end by themselves, so every step decodes all K.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from .server_load import _prompt, _seed


def step_ms(engine, rows: int, steps: int, temperature: float, own_prompts: bool) -> float:
    """Median wall time of one batch step once all ``rows`` decode (every row wants more tokens than it gets)."""
    from inference import GenerationRequest, SamplingParams
    from inference.batching import BatchGenerator

    batch = BatchGenerator(engine, rows)
    max_tokens = steps + 64
    if own_prompts:
        for row in range(rows):
            batch.submit(GenerationRequest(engine.render_prompt(_prompt(row)),
                                           [SamplingParams(temperature=temperature, seed=_seed(row))], max_tokens))
    else:
        drafts = [SamplingParams(temperature=temperature, seed=_seed(row)) for row in range(rows)]
        batch.submit(GenerationRequest(engine.render_prompt(_prompt(0)), drafts, max_tokens))
    for _ in range(4 * rows + 16):  # each prompt joins after its prefill: a step or a few each
        if batch.active_rows == rows:
            break
        batch.step()
    else:
        raise SystemExit(f"batch_steps: {rows} rows never decoded together (rows ended by themselves?): use a "
                         "checkpoint with random weights")
    for _ in range(4):  # the new shape's first steps compile
        batch.step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - started)
    for request_id in range(rows if own_prompts else 1):
        batch.cancel(request_id)
    batch.step()
    return statistics.median(times) * 1000


def arrivals(engine, clients: int, temperature: float, first: int, max_tokens: int = 8
             ) -> tuple[int, list[float], float]:
    """``clients`` requests of their own prompts (those of clients ``first`` ...) submitted at once: (steps until
    each has its first token, their times to first token in ms, sorted, the longest of those steps in ms)."""
    from inference import GenerationRequest, SamplingParams, TokenDelta
    from inference.batching import BatchGenerator

    batch = BatchGenerator(engine, max(clients, 1))
    started = time.perf_counter()
    ids = {batch.submit(GenerationRequest(engine.render_prompt(_prompt(row)),
                                          [SamplingParams(temperature=temperature, seed=_seed(row))], max_tokens))
           for row in range(first, first + clients)}
    first_token_ms: dict[int, float] = {}
    steps, longest = 0, 0.0
    while len(first_token_ms) < clients:
        step_started = time.perf_counter()
        events = batch.step()
        now = time.perf_counter()
        steps, longest = steps + 1, max(longest, now - step_started)
        for request_id, event in events:
            if isinstance(event, TokenDelta) and request_id in ids:
                first_token_ms.setdefault(request_id, 1000 * (now - started))
        if not batch.has_work:
            raise SystemExit("batch_steps: a request ended without a token")
    while batch.has_work:
        batch.step()
    return steps, sorted(first_token_ms.values()), 1000 * longest


def _print_arrivals(engine, rows: list[int], temperature: float) -> None:
    from .server_load import _percentile

    list(engine.generate(_alone_request(engine, temperature)))  # the prompt cache holds a prompt, as after any request
    for clients in rows:  # unmeasured: each batch size's first prefill and steps compile on a GPU
        arrivals(engine, clients, temperature, 0)
    fresh = 1000  # the measured requests' prompts were never seen: none is in the prompt cache
    print("\nK requests submitted at once, after one alone: time to first token without HTTP")
    print("| requests | steps until all have a token | TTFT p50 / p95 ms | longest step ms |")
    print("|---|---|---|---|")
    for clients in rows:
        steps, ttfts, longest = arrivals(engine, clients, temperature, fresh)
        fresh += clients
        print(f"| {clients} | {steps} | {_percentile(ttfts, 50):.0f} / {_percentile(ttfts, 95):.0f} "
              f"| {longest:.1f} |", flush=True)


def _alone_request(engine, temperature: float):
    from inference import GenerationRequest, SamplingParams

    return GenerationRequest(engine.render_prompt("Write a post."), [SamplingParams(temperature=temperature)], 4)


def main() -> None:
    from .checkpoints import SHAPES, qwen_tokenizer_dir, write_checkpoint
    from .engine import load_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the tiny shape's random checkpoint in .bench-cache")
    parser.add_argument("--rows", default="1,4,8,16,32", help="comma-separated K values")
    parser.add_argument("--steps", type=int, default=48, help="steps timed per K")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--mlx-products", action="store_true", help="MLX's products instead of our CUDA kernels")
    parser.add_argument("--arrivals", action="store_true", help="time to first token of K requests at once instead")
    parser.add_argument("--dequantized-rows", type=int, help="EngineOptions.dequantized_rows (default: the device's)")
    args = parser.parse_args()
    if args.model is None:
        args.model = write_checkpoint(Path(".bench-cache/tiny"), SHAPES["tiny"], tokenizer_dir=qwen_tokenizer_dir(),
                                      reuse=True)
    options = {"cuda_kernels": False} if args.mlx_products else {}
    if args.dequantized_rows is not None:
        options["dequantized_rows"] = args.dequantized_rows
    engine = load_engine(args.model, None, options)
    engine.warmup()
    kernels = "on" if engine.model.lm_head.kernel else "off"
    rows = [int(k) for k in args.rows.split(",")]
    if args.arrivals:
        print(f"model {args.model.name}, our CUDA kernels {kernels}, dequantized products from "
              f"{engine.model.options.dequantized_rows or 'no'} rows, temperature {args.temperature}")
        _print_arrivals(engine, rows, args.temperature)
        return
    print(f"model {args.model.name}, our CUDA kernels {kernels}: median ms per batch step, {args.steps} steps, "
          f"temperature {args.temperature}")
    print("| rows | one prompt, K drafts | K prompts (padded) | padded / one | tok/s, K prompts |")
    print("|---|---|---|---|---|")
    for k in rows:
        one = step_ms(engine, k, args.steps, args.temperature, own_prompts=False)
        own = step_ms(engine, k, args.steps, args.temperature, own_prompts=True)
        print(f"| {k} | {one:.2f} | {own:.2f} | {own / one:.2f}x | {k * 1000 / own:.0f} |", flush=True)


if __name__ == "__main__":
    main()
