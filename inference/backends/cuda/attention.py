"""Attention of a one-token step for left-padded rows as one CUDA kernel (``attention.cu``).

A batch whose rows sit at different positions (a server's requests, each joined after its own prefill) hides each
row's left padding with a mask, and MLX's attention for one query takes no array mask on CUDA: it falls back to its
ops (two products, a select, a softmax, a scale: ~6 kernels a layer, against its one vector kernel without a mask).
The kernel reads each row's start and position instead of a mask, and the cache buffers in place.
"""

from __future__ import annotations

import mlx.core as mx

from . import KernelSource, call, read_source

THREADS = 1024  # 32 warps a (row, head), each taking every 32nd key
HEAD_DIMS = (64, 128, 256)  # whole lanes of D / 32 elements, as the shared memory holds them

_kernels: dict[float, object] = {}  # scale -> kernel


def covers(dtype: mx.Dtype, head_dim: int, heads: int, kv_heads: int) -> bool:
    """Whether the kernel computes a model's one-token attention (decided at load: these do not change): 16-bit
    floats, a head size of whole lanes, heads a whole multiple of the key/value heads."""
    return dtype in (mx.bfloat16, mx.float16) and head_dim in HEAD_DIMS and heads % kv_heads == 0


def reference(q: mx.array, keys: mx.array, values: mx.array, start: mx.array, position: mx.array,
              scale: float) -> mx.array:
    """What ``decode_attention`` computes, as MLX's ops: row r attends to cache positions ``start[r]`` to
    ``start[r] + position[r]``, its left padding masked."""
    length = int(mx.max(start + position).item()) + 1
    k, v = keys[..., :length, :], values[..., :length, :]
    columns = mx.arange(length)
    mask = (start[:, None] <= columns) & (columns <= (start + position)[:, None])
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask[:, None, None, :])


def kernel_source(scale: float) -> KernelSource:
    """The kernel for one model's attention scale: a float constant of its body (template arguments are integers,
    types and booleans)."""
    arguments = ("q", "keys", "values", "start", "position", "out", "keys_shape[2]", f"{float(scale)!r}f")
    body = call("decode_attention", ("T", "HEADS", "KV_HEADS", "D"), arguments)
    return KernelSource("bobby_decode_attention", ("q", "keys", "values", "start", "position"), ("out",),
                        read_source("attention.cu"), body)


def decode_attention(q: mx.array, keys: mx.array, values: mx.array, start: mx.array, position: mx.array,
                     scale: float) -> mx.array:
    """q (B, heads, 1, D); keys, values (B, kv_heads, capacity, D), the cache's buffers with the new token written;
    start, position int32 (B,): each row's left padding and the new token's position among its own. -> (B, heads, 1,
    D)."""
    if scale not in _kernels:
        _kernels[scale] = kernel_source(scale).build()
    rows, heads, _, head_dim = q.shape
    (out,) = _kernels[scale](
        inputs=[q, keys, values, start, position],
        template=[("T", q.dtype), ("HEADS", heads), ("KV_HEADS", keys.shape[1]), ("D", head_dim)],
        grid=(rows * heads * THREADS, 1, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[q.shape],
        output_dtypes=[q.dtype],
    )
    return out
