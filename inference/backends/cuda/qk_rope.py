"""The attention inputs of a one-token step as one CUDA kernel (``qk_rope.cu``): split q/k/v, RMSNorm q and k per
head, rotate them.

Op by op this is ~13 MLX ops a block (a split, reshapes and transposes, two norms, two RoPEs), each costing the host
a few microseconds on CUDA whatever its size: the kernel does it in one, reading the fused q/k/v projection's output.
It rounds where MLX does (after the norm, after the rotation), so its outputs match ``reference`` (``mx.fast.rms_norm``
+ ``mx.fast.rope``) to within one rounding of the compute dtype.
"""

from __future__ import annotations

import math

import mlx.core as mx

from . import KernelSource, call, read_source

_kernels: dict[tuple[float, float], object] = {}


def covers(x: mx.array, head_dim: int) -> bool:
    """Whether the kernel computes the step for input ``x`` (B, L, ...): one token per row, and whole rotation pairs
    for each of a warp's lanes."""
    return x.ndim == 3 and x.shape[1] == 1 and head_dim % 64 == 0


def reference(qkv: mx.array, q_norm: mx.array, k_norm: mx.array, offset: int | mx.array, heads: int, kv_heads: int,
              head_dim: int, eps: float, rope_base: float) -> tuple[mx.array, mx.array, mx.array]:
    """What ``queries_keys_values`` computes, as MLX's ops (what the engine runs without the kernel), for any L:
    qkv (B, L, (heads + 2 kv_heads) * head_dim) -> q (B, heads, L, head_dim), k and v (B, kv_heads, L, head_dim)."""
    B, L, _ = qkv.shape
    q, k, v = mx.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
    q = mx.fast.rms_norm(q.reshape(B, L, heads, -1), q_norm, eps).transpose(0, 2, 1, 3)
    k = mx.fast.rms_norm(k.reshape(B, L, kv_heads, -1), k_norm, eps).transpose(0, 2, 1, 3)
    v = v.reshape(B, L, kv_heads, -1).transpose(0, 2, 1, 3)
    q = mx.fast.rope(q, head_dim, traditional=False, base=rope_base, scale=1.0, offset=offset)
    k = mx.fast.rope(k, head_dim, traditional=False, base=rope_base, scale=1.0, offset=offset)
    return q, k, v


def kernel_source(eps: float, rope_base: float) -> KernelSource:
    """The kernel for one model's norm epsilon and RoPE base: float constants of its body (template arguments are
    integers, types and booleans), so each pair has its own source and name."""
    arguments = ("qkv", "q_norm", "k_norm", "offset", "q", "k", "v", "qkv_shape[0]", f"{float(eps)!r}f",
                 f"{math.log2(rope_base)!r}f")
    body = call("qk_rope", ("T", "HEADS", "KV_HEADS", "HEAD_DIM", "PER_ROW"), arguments)
    return KernelSource("bobby_qk_rope", ("qkv", "q_norm", "k_norm", "offset"), ("q", "k", "v"),
                        read_source("qk_rope.cu"), body)


def queries_keys_values(qkv: mx.array, q_norm: mx.array, k_norm: mx.array, offset: mx.array, heads: int,
                        kv_heads: int, head_dim: int, eps: float,
                        rope_base: float) -> tuple[mx.array, mx.array, mx.array]:
    """qkv (B, 1, (heads + 2 kv_heads) * head_dim), offset int32 (one value, or (B,): each row's position) -> q (B,
    heads, 1, head_dim), k, v."""
    key = (eps, rope_base)
    if key not in _kernels:
        _kernels[key] = kernel_source(eps, rope_base).build()
    rows = qkv.shape[0]
    tasks = rows * (heads + 2 * kv_heads)
    return tuple(_kernels[key](
        inputs=[qkv, q_norm, k_norm, offset],
        template=[("T", qkv.dtype), ("HEADS", heads), ("KV_HEADS", kv_heads), ("HEAD_DIM", head_dim),
                  ("PER_ROW", offset.ndim == 1)],
        grid=(tasks * 32, 1, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(rows, heads, 1, head_dim), (rows, kv_heads, 1, head_dim), (rows, kv_heads, 1, head_dim)],
        output_dtypes=[qkv.dtype] * 3,
    ))
