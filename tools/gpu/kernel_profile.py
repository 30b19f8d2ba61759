"""GPU time per kernel of warm one-token steps, by batch size, through torch's profiler (CUPTI sees MLX's kernels).

    python -m tools.gpu.kernel_profile [--shape 8B] [--batches 1,4,8] [--steps 16] [--adapter] [--padded]

Needs torch with CUDA in the same environment. Per batch size: the GPU's busy time per
step (the sum of its kernels' durations) against the wall time per step, and the kernels that take the most.
``--padded``: each row's prompt 8 tokens shorter than the one before, left-padded into one cache, as a server's
batch of different requests is (attention then takes a mask, RoPE a position per row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx.core as mx
import torch
from torch.profiler import ProfilerActivity, profile

from inference import Engine
from tools.bench.checkpoints import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint


def device_us(event) -> float:
    return getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)


def padded_rows(layer_cache, rows: int):
    """One layer's batch cache whose row r holds the prompt's first ``offset - 8 r`` positions, left-padded."""
    batch = layer_cache.prefix(layer_cache.offset)
    for row in range(1, rows):
        batch.extend(layer_cache.prefix(layer_cache.offset - 8 * row))
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8B")
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench-cache"), help="the benchmark checkpoints")
    parser.add_argument("--tokenizer-dir", type=Path)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--adapter", action="store_true")
    parser.add_argument("--padded", action="store_true", help="rows at their own positions")
    args = parser.parse_args()
    model_dir = write_checkpoint(args.cache_dir / args.shape, SHAPES[args.shape],
                                 tokenizer_dir=args.tokenizer_dir or qwen_tokenizer_dir(), reuse=True)
    adapter_dir = (write_adapter(args.cache_dir / f"{args.shape}-lora", model_dir, reuse=True)
                   if args.adapter else None)
    model = Engine.load(model_dir, adapter_dir).model
    prompt_cache = model.new_cache(1)
    mx.eval(model(mx.array([[1000 + (i * 7919) % 50000 for i in range(512)]]), prompt_cache, args.adapter))
    torch.cuda.init()
    for rows in map(int, args.batches.split(",")):
        cache = [padded_rows(layer, rows) if args.padded else layer.repeat(rows) for layer in prompt_cache]
        tokens = mx.zeros((rows, 1), dtype=mx.uint32)
        for _ in range(3):
            tokens = mx.argmax(model.decode(tokens, cache, args.adapter), axis=-1)[:, None]
            mx.eval(tokens)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            for _ in range(args.steps):
                tokens = mx.argmax(model.decode(tokens, cache, args.adapter), axis=-1)[:, None]
                mx.async_eval(tokens)
            mx.eval(tokens)
            wall_ms = 1000 * (time.perf_counter() - started) / args.steps
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if device_us(e) > 0]
        busy_ms = sum(device_us(e) for e in events) / 1000 / args.steps
        print(f"\n## batch {rows}{' (adapter on)' if args.adapter else ''}{' (padded)' if args.padded else ''}: "
              f"{wall_ms:.2f} ms a step wall, "
              f"{busy_ms:.2f} ms of kernels\n\n| kernel | calls a step | us a step |\n|---|---|---|")
        for e in sorted(events, key=lambda e: -device_us(e))[:14]:
            print(f"| {e.key[:90]} | {e.count / args.steps:.0f} | {device_us(e) / args.steps:.0f} |")


if __name__ == "__main__":
    main()
