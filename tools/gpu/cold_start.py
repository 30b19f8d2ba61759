"""Where a process's first generation spends its time on CUDA, phase by phase; then warm one-token steps by batch.

    python -m tools.gpu.cold_start [--shape 8B] [--cache-dir .bench-cache] [--tokenizer-dir DIR] [--batches 1,4,8]

Loads our engine on the bench's random checkpoint (written if missing), then times, each evaluated on its own: a
512-token prompt pass, two one-token steps of one draft, two of 4 drafts, then the same with the adapter on. After each
phase it counts the files in MLX's kernel cache (MLX_PTX_CACHE_DIR, default /tmp/mlx/VERSION/ptx), so a phase that
compiled kernels shows it. Run it twice in fresh processes: the second run's cache is warm.

The second table: 64 warm one-token steps per batch size, queued as the engine queues them (each step's graph built
while the previous one runs), with the time spent building graphs on the host. Where building takes about as long as
a step, the host bounds decoding, not the GPU; likewise for dispatching (``mx.async_eval``: MLX encodes each kernel
launch on the calling thread).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from inference import Engine
from tools.bench.checkpoints import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint


def kernel_cache_files() -> int:
    cache = Path(os.environ.get("MLX_PTX_CACHE_DIR") or Path(tempfile.gettempdir()) / "mlx" / mx.__version__ / "ptx")
    return len(list(cache.glob("*"))) if cache.is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8B")
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench-cache"), help="the benchmark checkpoints")
    parser.add_argument("--tokenizer-dir", type=Path)
    parser.add_argument("--batches", default="1,2,4,8")
    args = parser.parse_args()
    model_dir = write_checkpoint(args.cache_dir / args.shape, SHAPES[args.shape],
                                 tokenizer_dir=args.tokenizer_dir or qwen_tokenizer_dir(), reuse=True)
    adapter_dir = write_adapter(args.cache_dir / f"{args.shape}-lora", model_dir, reuse=True)

    def phase(name: str, fn, *args) -> object:
        files = kernel_cache_files()
        started = time.perf_counter()
        result = fn(*args)
        mx.eval(result if isinstance(result, mx.array) else [])
        print(f"| {name} | {1000 * (time.perf_counter() - started):.1f} | {kernel_cache_files() - files} |", flush=True)
        return result

    print("| phase | ms | kernel cache files added |\n|---|---|---|")
    model = phase("load", Engine.load, model_dir, adapter_dir).model
    prompt = mx.array([[1000 + (i * 7919) % 50000 for i in range(512)]])
    for use_lora in (False, True):
        label = "adapter on" if use_lora else "adapter off"
        cache = model.new_cache(1)
        logits = phase(f"{label}: 512-token prompt", model, prompt, cache, use_lora)
        tokens = mx.argmax(logits, axis=-1)[:, None]
        for step in (1, 2):
            logits = phase(f"{label}: step {step}, 1 draft", model.decode, tokens, cache, use_lora)
            tokens = mx.argmax(logits, axis=-1)[:, None]
        batch = [layer.repeat(4) for layer in cache]
        tokens = mx.repeat(tokens, 4, axis=0)
        for step in (1, 2):
            logits = phase(f"{label}: step {step}, 4 drafts", model.decode, tokens, batch, use_lora)
            tokens = mx.argmax(logits, axis=-1)[:, None]
    print("\n| batch | adapter | ms a step | host: building graphs | host: dispatching | tokens/s |")
    print("|---|---|---|---|---|---|")
    cache = model.new_cache(1)
    mx.eval(model(prompt, cache))
    for rows in map(int, args.batches.split(",")):
        for use_lora in (False, True):
            print(steady_steps(model, [layer.repeat(rows) for layer in cache], rows, use_lora), flush=True)


def steady_steps(model, cache, rows: int, use_lora: bool, steps: int = 64) -> str:
    tokens = mx.zeros((rows, 1), dtype=mx.uint32)
    for _ in range(3):  # traces and kernels for this batch size
        tokens = mx.argmax(model.decode(tokens, cache, use_lora), axis=-1)[:, None]
        mx.eval(tokens)
    building = dispatching = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        built = time.perf_counter()
        tokens = mx.argmax(model.decode(tokens, cache, use_lora), axis=-1)[:, None]
        dispatched = time.perf_counter()
        mx.async_eval(tokens)
        building, dispatching = building + dispatched - built, dispatching + time.perf_counter() - dispatched
    mx.eval(tokens)
    step_ms = 1000 * (time.perf_counter() - started) / steps
    return (f"| {rows} | {'on' if use_lora else 'off'} | {step_ms:.2f} | {1000 * building / steps:.2f} "
            f"| {1000 * dispatching / steps:.2f} | {1000 * rows / step_ms:.0f} |")


if __name__ == "__main__":
    main()
