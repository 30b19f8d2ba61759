"""Micro-benchmark of the decode products: our CUDA 4-bit kernel (``inference.gemv``) against MLX's own.

    python -m inference.bench_gemv [--shapes 8B] [--rows 1,4,8] [--json PATH] [--sweep 2048,4096,8192]

For each product of a decoder block at the given model shapes (q/k/v and gate/up fused, as the engine runs them, and
the output head), with 1, 4 and 8 input rows, prints the time per product and the weight bytes read per second, with
and without what the kernel folds in (a rank-8 LoRA update and the residual sum), and each one's largest error
against a float32 product of the dequantized weights. Time per op: 64 independent products per ``mx.eval``, the
median of 7 evaluations after a warm one, so MLX's per-op cost is included as the engine pays it. ``--sweep`` first
times the plain product with other targets for the warps in flight (``gemv.TARGET_WARPS``), to tune the default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mlx.core as mx

from . import gemv
from .bench import BITS, GROUP_SIZE, SHAPES

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
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [("qkv", s.hidden, q + 2 * kv), ("o", q, s.hidden), ("gate_up", s.hidden, 2 * s.intermediate),
            ("down", s.intermediate, s.hidden), ("head", s.hidden, 151936)]


def quantized_weights(k: int, n: int, dtype: mx.Dtype) -> tuple[mx.array, mx.array, mx.array]:
    w, scales, biases = mx.quantize(mx.random.normal((n, k), scale=k**-0.5), group_size=GROUP_SIZE, bits=BITS)
    return w, scales.astype(dtype), biases.astype(dtype)


def sweep(shape: str, targets: list[int], rows_list: list[int]) -> None:
    default = gemv.TARGET_WARPS
    print("| product | rows | mlx us | " + " | ".join(f"{t} warps us" for t in targets) + " |")
    print("|---" * (len(targets) + 3) + "|")
    for name, k, n in products(shape):
        w, scales, biases = quantized_weights(k, n, mx.bfloat16)
        for rows in rows_list:
            xs = [(mx.random.normal((rows, k)).astype(mx.bfloat16),) for _ in range(OPS_PER_EVAL)]
            mlx_us = per_op_us(lambda x: mx.quantized_matmul(x, w, scales, biases, group_size=GROUP_SIZE, bits=BITS), xs)
            cells = []
            for gemv.TARGET_WARPS in targets:
                cells.append(per_op_us(lambda x: gemv.quantized_gemv(x, w, scales, biases, GROUP_SIZE), xs))
            print(f"| {name} | {rows} | {mlx_us:.1f} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)
    gemv.TARGET_WARPS = default


def measure(name: str, k: int, n: int, rows: int, dtype: mx.Dtype, rank: int = 8) -> dict:
    w, scales, biases = quantized_weights(k, n, dtype)
    a_t = (mx.random.normal((rank, k)) * k**-0.5).astype(dtype)
    b_t = (mx.random.normal((n, rank)) * 0.1).astype(dtype)
    xs = [(mx.random.normal((rows, k)).astype(dtype), mx.random.normal((rows, n)).astype(dtype)) for _ in range(OPS_PER_EVAL)]
    mx.eval(w, scales, biases, a_t, b_t, xs)

    def mlx_plain(x, res):
        return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=GROUP_SIZE, bits=BITS)

    def ours_plain(x, res):
        return gemv.quantized_gemv(x, w, scales, biases, GROUP_SIZE)

    def mlx_fused(x, res):  # what the engine runs without the kernel: product, LoRA's two products and sum, residual
        return res + (mlx_plain(x, res) + (x @ a_t.T) @ b_t.T)

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
                           ("mlx+lora+res", mlx_fused, reference_fused), ("ours+lora+res", ours_fused, reference_fused)):
        row[f"{label} us"] = per_op_us(fn, xs)
        row[f"{label} err"] = error(fn, ref)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8B")
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--json")
    parser.add_argument("--sweep", help="targets for the warps in flight to compare first, e.g. 2048,4096,8192")
    args = parser.parse_args(argv)
    if not gemv.enabled():
        raise SystemExit("bench_gemv: the kernel runs on CUDA only (mlx-cuda and a GPU), or BOBBY_CUDA_KERNELS=0 is set")
    print(f"mlx {mx.__version__} {mx.default_device()} {mx.device_info().get('device_name', '')}")
    if args.sweep:
        for shape in args.shapes.split(","):
            sweep(shape, [int(t) for t in args.sweep.split(",")], [int(r) for r in args.rows.split(",")])
    rows_out = []
    header = ("| shape | product | K x N | rows | MB | mlx us | ours us | ours GB/s | speedup | +LoRA+res: mlx us | ours us |"
              " speedup | max rel err mlx / ours |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in args.shapes.split(","):
        for name, k, n in products(shape):
            for rows in map(int, args.rows.split(",")):
                r = measure(name, k, n, rows, mx.bfloat16) | {"shape": shape}
                rows_out.append(r)
                print(f"| {shape} | {name} | {k} x {n} | {rows} | {r['weight_mb']:.1f} | {r['mlx us']:.1f} | {r['ours us']:.1f} "
                      f"| {r['weight_mb'] * 1e-3 / (r['ours us'] * 1e-6):.0f} | {r['mlx us'] / r['ours us']:.2f}x "
                      f"| {r['mlx+lora+res us']:.1f} | {r['ours+lora+res us']:.1f} | {r['mlx+lora+res us'] / r['ours+lora+res us']:.2f}x "
                      f"| {r['mlx err']:.1e} / {r['ours err']:.1e} (fused {r['mlx+lora+res err']:.1e} / {r['ours+lora+res err']:.1e}) |",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
