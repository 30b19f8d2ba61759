"""Micro-benchmark of the decode products: our CUDA 4-bit kernel (``inference.backends.cuda.gemv``) against MLX's ops.

    python -m tools.bench.kernels [--shapes 8B] [--rows 1,4,8] [--json PATH] [--sweep 2048,4096,8192]

For each product of a decoder block at the given model shapes (q/k/v and gate/up fused, as the engine runs them, and
the output head), with 1, 4 and 8 input rows, prints the time per product and the weight bytes read per second, with
and without what the kernel folds in (a rank-8 LoRA update and the residual sum; MLX's side is ``gemv.reference``), and
each one's largest error against a float32 product of the dequantized weights. Time per op: 64 independent products
per ``mx.eval``, the
median of 7 evaluations after a warm one, so MLX's per-op cost is included as the engine pays it. ``--sweep`` first
times the plain product with other targets for the warps in flight (``quantized_gemv``'s ``target_warps``; the default
is ``gemv.TARGET_WARPS``), to tune the default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import mlx.core as mx

from inference.backends import cuda
from inference.backends.cuda import gemv

from .checkpoints import SHAPES, Quantization

BITS, GROUP_SIZE = Quantization().bits, Quantization().group_size  # the benchmark checkpoints' quantization

OPS_PER_EVAL = 64


def per_op_us(fn, inputs: list) -> float:
    mx.eval([fn(*i) for i in inputs])
    times = []
    for _ in range(7):
        started = time.perf_counter()
        mx.eval([fn(*i) for i in inputs])
        times.append((time.perf_counter() - started) / len(inputs))
    return 1e6 * statistics.median(times)


def products(shape_name: str) -> list[tuple[str, int, int]]:
    s = SHAPES[shape_name]
    q, kv = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    h, inter = s.hidden_size, s.intermediate_size
    return [("qkv", h, q + 2 * kv), ("o", q, h), ("gate_up", h, 2 * inter), ("down", inter, h),
            ("head", h, s.vocab_size)]


def quantized_weights(k: int, n: int, dtype: mx.Dtype) -> tuple[mx.array, mx.array, mx.array]:
    w, scales, biases = mx.quantize(mx.random.normal((n, k), scale=k**-0.5), group_size=GROUP_SIZE, bits=BITS)
    return w, scales.astype(dtype), biases.astype(dtype)


def sweep(shape: str, targets: list[int], rows_list: list[int]) -> None:
    print("| product | rows | mlx us | " + " | ".join(f"{t} warps us" for t in targets) + " |")
    print("|---" * (len(targets) + 3) + "|")
    for name, k, n in products(shape):
        w, scales, biases = quantized_weights(k, n, mx.bfloat16)
        for rows in rows_list:
            xs = [(mx.random.normal((rows, k)).astype(mx.bfloat16),) for _ in range(OPS_PER_EVAL)]
            weights = {"w": w, "scales": scales, "biases": biases, "group_size": GROUP_SIZE}
            mlx_us = per_op_us(partial(gemv.reference, **weights), xs)
            cells = [per_op_us(partial(gemv.quantized_gemv, **weights, target_warps=target), xs) for target in targets]
            print(f"| {name} | {rows} | {mlx_us:.1f} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


def measure(name: str, k: int, n: int, rows: int, dtype: mx.Dtype, rank: int = 8) -> dict:
    w, scales, biases = quantized_weights(k, n, dtype)
    a_t = (mx.random.normal((rank, k)) * k**-0.5).astype(dtype)
    b_t = (mx.random.normal((n, rank)) * 0.1).astype(dtype)
    xs = [(mx.random.normal((rows, k)).astype(dtype), mx.random.normal((rows, n)).astype(dtype))
          for _ in range(OPS_PER_EVAL)]
    mx.eval(w, scales, biases, a_t, b_t, xs)

    def mlx_plain(x, res):
        return gemv.reference(x, w, scales, biases, GROUP_SIZE)

    def ours_plain(x, res):
        return gemv.quantized_gemv(x, w, scales, biases, GROUP_SIZE)

    def mlx_fused(x, res):  # what the engine runs without the kernel: product, LoRA's two products and sum, residual
        return gemv.reference(x, w, scales, biases, GROUP_SIZE, lora=(a_t, b_t), residual=res)

    def ours_fused(x, res):
        return gemv.quantized_gemv(x, w, scales, biases, GROUP_SIZE, lora=(a_t, b_t), residual=res)

    x, res = xs[0]
    with mx.stream(mx.cpu):  # float32 on the CPU: MLX's CUDA float32 matmuls may use TF32
        f32 = lambda a: a.astype(mx.float32)  # noqa: E731
        reference = f32(x) @ mx.dequantize(w, f32(scales), f32(biases), group_size=GROUP_SIZE, bits=BITS).T
        reference_fused = f32(res) + reference + (f32(x) @ f32(a_t).T) @ f32(b_t).T
        mx.eval(reference, reference_fused)
    scale = mx.abs(reference).max().item()

    def error(fn, ref):
        return (mx.abs(fn(x, res).astype(mx.float32) - ref).max().item()) / scale

    row = {"product": name, "k": k, "n": n, "rows": rows, "weight_mb": (w.nbytes + scales.nbytes + biases.nbytes) / 1e6}
    for label, fn, ref in (("mlx", mlx_plain, reference), ("ours", ours_plain, reference),
                           ("mlx+lora+res", mlx_fused, reference_fused),
                           ("ours+lora+res", ours_fused, reference_fused)):
        row[f"{label} us"] = per_op_us(fn, xs)
        row[f"{label} err"] = error(fn, ref)
    return row


def table_row(r: dict) -> str:
    plain, fused = r["mlx us"] / r["ours us"], r["mlx+lora+res us"] / r["ours+lora+res us"]
    cells = [r["shape"], r["product"], f"{r['k']} x {r['n']}", r["rows"], f"{r['weight_mb']:.1f}", f"{r['mlx us']:.1f}",
             f"{r['ours us']:.1f}", f"{r['weight_mb'] * 1e-3 / (r['ours us'] * 1e-6):.0f}", f"{plain:.2f}x",
             f"{r['mlx+lora+res us']:.1f}", f"{r['ours+lora+res us']:.1f}", f"{fused:.2f}x",
             f"{r['mlx err']:.1e} / {r['ours err']:.1e}"
             f" (fused {r['mlx+lora+res err']:.1e} / {r['ours+lora+res err']:.1e})"]
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8B")
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--json")
    parser.add_argument("--sweep", help="targets for the warps in flight to compare first, e.g. 2048,4096,8192")
    args = parser.parse_args(argv)
    if not cuda.available():
        raise SystemExit("tools.bench.kernels: the kernel runs on CUDA only (MLX for CUDA: mlx-cuda-13, and a GPU)")
    print(f"mlx {mx.__version__} {mx.default_device()} {mx.device_info().get('device_name', '')}")
    if args.sweep:
        for shape in args.shapes.split(","):
            sweep(shape, [int(t) for t in args.sweep.split(",")], [int(r) for r in args.rows.split(",")])
    rows_out = []
    header = ("| shape | product | K x N | rows | MB | mlx us | ours us | ours GB/s | speedup"
              " | +LoRA+res: mlx us | ours us | speedup | max rel err mlx / ours |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in args.shapes.split(","):
        for name, k, n in products(shape):
            for rows in map(int, args.rows.split(",")):
                r = measure(name, k, n, rows, mx.bfloat16) | {"shape": shape}
                rows_out.append(r)
                print(table_row(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
