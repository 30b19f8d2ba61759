"""Decode step time of the server's batch without HTTP: K requests with their own prompts (left-padded rows, as a
server's clients make) against one request with K drafts of one prompt (rows at one position), both through
``inference.batching.BatchGenerator`` on this thread. What the load benchmark's per-client rate loses beyond
this is the HTTP layer's; what the K prompts lose against the one prompt is the padded batch's.

    python -m tools.bench.batch_steps --model .bench-cache/tiny --rows 1,8,32
    python -m tools.bench.batch_steps --model .bench-cache/8B --rows 1,4,8,16,32 --steps 64

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


def main() -> None:
    from .checkpoints import SHAPES, qwen_tokenizer_dir, write_checkpoint
    from .engine import load_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the tiny shape's random checkpoint in .bench-cache")
    parser.add_argument("--rows", default="1,4,8,16,32", help="comma-separated K values")
    parser.add_argument("--steps", type=int, default=48, help="steps timed per K")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--mlx-products", action="store_true", help="MLX's products instead of our CUDA kernels")
    args = parser.parse_args()
    if args.model is None:
        args.model = write_checkpoint(Path(".bench-cache/tiny"), SHAPES["tiny"], tokenizer_dir=qwen_tokenizer_dir(),
                                      reuse=True)
    engine = load_engine(args.model, None, {"cuda_kernels": False} if args.mlx_products else {})
    engine.warmup()
    kernels = "on" if engine.model.lm_head.kernel else "off"
    print(f"model {args.model.name}, our CUDA kernels {kernels}: median ms per batch step, {args.steps} steps, "
          f"temperature {args.temperature}")
    print("| rows | one prompt, K drafts | K prompts (padded) | padded / one | tok/s, K prompts |")
    print("|---|---|---|---|---|")
    for rows in (int(k) for k in args.rows.split(",")):
        one = step_ms(engine, rows, args.steps, args.temperature, own_prompts=False)
        own = step_ms(engine, rows, args.steps, args.temperature, own_prompts=True)
        print(f"| {rows} | {one:.2f} | {own:.2f} | {own / one:.2f}x | {rows * 1000 / own:.0f} |", flush=True)


if __name__ == "__main__":
    main()
