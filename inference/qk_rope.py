"""The attention inputs of a one-token step as one CUDA kernel: split q/k/v, RMSNorm q and k per head, rotate them.

Op by op this is ~13 MLX ops a block (a split, reshapes and transposes, two norms, two RoPEs), each costing the host
a few microseconds on CUDA whatever its size: the kernel does it in one, reading the fused q/k/v projection's output
(rows, (heads + 2 kv_heads) * head_dim) and writing q (rows, heads, 1, head_dim), k and v (rows, kv_heads, 1,
head_dim), the layout attention reads. One warp per (row, head); each lane takes head_dim / 64 pairs (i, i + half).
It rounds where MLX does (after the norm, after the rotation), so outputs match ``mx.fast.rms_norm`` + ``mx.fast.rope``
to within one rounding of the compute dtype.
"""

from __future__ import annotations

import math

import mlx.core as mx

from .gemv import source_named_kernel

_SOURCE = """
  constexpr int HEADS_ALL = HEADS + 2 * KV_HEADS;
  constexpr int PAIRS = HEAD_DIM / 64;  // rotation pairs per lane
  constexpr int HALF = HEAD_DIM / 2;
  const int lane = threadIdx.x & 31;
  const int task = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (task >= qkv_shape[0] * HEADS_ALL) return;  // rows: read at run time, so one compiled kernel serves every batch
  const int m = task / HEADS_ALL, head = task % HEADS_ALL;
  const T* in = qkv + (size_t)m * HEADS_ALL * HEAD_DIM + (size_t)head * HEAD_DIM;
  float lo[PAIRS], hi[PAIRS];
  float ss = 0.f;
#pragma unroll
  for (int p = 0; p < PAIRS; ++p) {
    lo[p] = static_cast<float>(in[lane + 32 * p]);
    hi[p] = static_cast<float>(in[HALF + lane + 32 * p]);
    ss += lo[p] * lo[p] + hi[p] * hi[p];
  }
  if (head >= HEADS + KV_HEADS) {  // v: copied as it is
    T* out = v + ((size_t)m * KV_HEADS + head - HEADS - KV_HEADS) * HEAD_DIM;
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
      out[lane + 32 * p] = static_cast<T>(lo[p]);
      out[HALF + lane + 32 * p] = static_cast<T>(hi[p]);
    }
    return;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, offset);
  const float inv_rms = rsqrtf(ss / HEAD_DIM + EPS);
  const bool is_q = head < HEADS;
  const T* weight = is_q ? q_norm : k_norm;
  T* out = is_q ? q + ((size_t)m * HEADS + head) * HEAD_DIM : k + ((size_t)m * KV_HEADS + head - HEADS) * HEAD_DIM;
  const float position = static_cast<float>(offset[0]);
#pragma unroll
  for (int p = 0; p < PAIRS; ++p) {
    const int i = lane + 32 * p;
    const float a = static_cast<float>(static_cast<T>(lo[p] * inv_rms * static_cast<float>(weight[i])));
    const float b = static_cast<float>(static_cast<T>(hi[p] * inv_rms * static_cast<float>(weight[HALF + i])));
    float s, c;
    sincosf(position * exp2f(-static_cast<float>(i) * (LOG2_BASE / HALF)), &s, &c);
    out[i] = static_cast<T>(a * c - b * s);
    out[HALF + i] = static_cast<T>(a * s + b * c);
  }
"""

_kernels: dict[tuple[float, float], object] = {}


def queries_keys_values(qkv: mx.array, q_norm: mx.array, k_norm: mx.array, offset: mx.array, heads: int,
                        kv_heads: int, head_dim: int, eps: float, rope_base: float) -> tuple[mx.array, mx.array, mx.array]:
    """qkv (B, 1, (heads + 2 kv_heads) * head_dim), offset int32 (one value) -> q (B, heads, 1, head_dim), k, v.

    Needs head_dim a multiple of 64 (a warp's lanes take whole rotation pairs)."""
    key = (eps, rope_base)
    if key not in _kernels:  # eps and the base are float constants of the source (template arguments are integers)
        source = f"  constexpr float EPS = {eps!r}f;\n  constexpr float LOG2_BASE = {math.log2(rope_base)!r}f;\n" + _SOURCE
        _kernels[key] = source_named_kernel("bobby_qk_rope", ["qkv", "q_norm", "k_norm", "offset"], ["q", "k", "v"], source)
    rows = qkv.shape[0]
    tasks = rows * (heads + 2 * kv_heads)
    return tuple(_kernels[key](
        inputs=[qkv, q_norm, k_norm, offset],
        template=[("T", qkv.dtype), ("HEADS", heads), ("KV_HEADS", kv_heads), ("HEAD_DIM", head_dim)],
        grid=(tasks * 32, 1, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(rows, heads, 1, head_dim), (rows, kv_heads, 1, head_dim), (rows, kv_heads, 1, head_dim)],
        output_dtypes=[qkv.dtype] * 3,
    ))
