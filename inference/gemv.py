"""A 4-bit matrix-vector kernel of our own for CUDA, on the tensor cores, for the few rows that decoding multiplies.

MLX's own 4-bit product for one row reads the weights at 0.6-0.8 TB/s on an H100 (a quarter to a third of the card's
bandwidth), and for 4 rows it takes ~3.5x as long as for one. Decoding is memory-bound, so that is where a token's
time goes. This kernel reads each weight once for up to ``MAX_ROWS`` input rows (drafts decoding together) and folds
in what follows the product in a decoder block: the LoRA update's second factor and the residual sum, which would
each be one more MLX op (~7 us each on CUDA, whatever their size).

Layout (mlx-community's affine quantization): ``w`` (N, K/8) uint32, eight 4-bit values per word, lowest bits first;
``scales`` and ``biases`` (N, K/group). Value = scale * q + bias.

The arithmetic runs on the tensor cores (``mma.sync`` m16n8k16: 16 outputs x 16 inputs times 16 inputs x 8 input
rows), so its cost per weight does not grow with the rows, as a float loop's did (an FMA per weight and row). A warp
owns 16 outputs; the 4 lanes of each mma "quad" hold one row's words of a quantization group between them, so every
mma sums inputs of one group and the group's scale and bias apply to its float result:

    sum_k x_k (s q_k + b) = s * sum_k x_k (MAGIC + q_k) + (b - MAGIC s) * sum_k x_k

``MAGIC + q`` is a 16-bit float made from the packed nibbles with one AND and one OR (q in the low mantissa bits of
128.0 in bf16, of 1024.0 in fp16: exact), and ``sum_k x_k`` comes from an mma with a matrix of ones. The block's
warps split K; their partial sums meet in shared memory. The LoRA's first product, t = x A^T (R outputs), runs
through a small float kernel with dense weights.

On Metal and on the CPU, for float32 activations and for shapes the kernel does not cover, ``Linear`` uses
``mx.quantized_matmul``.
"""

from __future__ import annotations

import hashlib
import os

import mlx.core as mx

# Input rows per call: the mma's 8 columns. Prompts and batches of more drafts go through mx.quantized_matmul.
MAX_ROWS = 8
BITS = 4
GROUP_SIZES = (32, 64, 128)  # a quad's 4 lanes take 1, 2 or 4 words of a group each
TILE = 16  # outputs per warp: the mma's rows
# Warps in flight over the whole product: each block's warps split K until there are about this many, so enough loads
# are in flight to cover memory latency for small products too (o_proj: 256 tiles, 8 warps each; bench_gemv --sweep).
TARGET_WARPS = 2048
MAX_WARPS = 8  # 256 threads: launchable at any register count (a block may hold 64K registers)
DENSE_THREADS = 128  # the LoRA's first product: one block per output, its warps splitting K

_HEADER = """
// D (16 x 8 floats) += A (16 x 16) B (16 x 8), A and B as pairs of 16-bit floats (bf16 or fp16) in 32-bit registers.
// Fragments (PTX ISA, mma.m16n8k16): lane = 4 g + t holds A rows g and g + 8 at columns 2t, 2t + 1 (a0, a1) and
// 2t + 8, 2t + 9 (a2, a3); B rows 2t, 2t + 1 (b0) and 2t + 8, 2t + 9 (b1) of column g; D rows g (d0, d1) and g + 8
// (d2, d3) at columns 2t, 2t + 1.
template <bool BF16>
__device__ __forceinline__ void mma_16x8x16(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                            uint32_t b1) {
  if constexpr (BF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}
template <int COUNT>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t* out) {
  if constexpr (COUNT == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  } else if constexpr (COUNT == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    out[0] = v.x; out[1] = v.y;
  } else {
    out[0] = __ldg(p);
  }
}
// Adds BATCH groups' sums to out (see _QUANTIZED_BODY): loads of all BATCH groups first, so they are in flight
// together, then their arithmetic.
template <typename T, bool BF16, int GROUP, int BATCH>
__device__ __forceinline__ void accumulate_groups(const uint32_t* w_lo, const uint32_t* w_hi, const T* x_row,
                                                  const T* scales, const T* biases, size_t s_lo, size_t s_hi,
                                                  int group, int group_stride, float* out) {
  constexpr int LANE_WORDS = GROUP / 32;  // a lane's words of each group: the quad's 4 lanes hold the group
  constexpr uint32_t MAGIC = BF16 ? 0x43004300u : 0x64006400u;  // (128, 128) in bf16, (1024, 1024) in fp16
  constexpr float MAGIC_VALUE = BF16 ? 128.f : 1024.f;
  constexpr uint32_t ONES = BF16 ? 0x3F803F80u : 0x3C003C00u;
  uint32_t lo[BATCH][LANE_WORDS], hi[BATCH][LANE_WORDS];
  uint4 xv[BATCH][LANE_WORDS];
  T scale[BATCH][2], bias[BATCH][2];
#pragma unroll
  for (int u = 0; u < BATCH; ++u) {
    const int gr = group + u * group_stride;
    load_words<LANE_WORDS>(w_lo + gr * (GROUP / 8), lo[u]);
    load_words<LANE_WORDS>(w_hi + gr * (GROUP / 8), hi[u]);
#pragma unroll
    for (int j = 0; j < LANE_WORDS; ++j) xv[u][j] = __ldg(reinterpret_cast<const uint4*>(x_row + gr * GROUP + j * 8));
    scale[u][0] = __ldg(scales + s_lo + gr), scale[u][1] = __ldg(scales + s_hi + gr);
    bias[u][0] = __ldg(biases + s_lo + gr), bias[u][1] = __ldg(biases + s_hi + gr);
  }
#pragma unroll
  for (int u = 0; u < BATCH; ++u) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, xsum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < LANE_WORDS; ++j) {
      // The word's 8 inputs x0..x7 go to the mma as pairs (x0, x4), (x1, x5) | (x2, x6), (x3, x7): the pairs of
      // nibbles one mask takes from a word (bits 0-3 and 16-19, then shifted by 4, 8, 12). The mma's sum does not
      // care which of its 16 columns holds which input, as long as A and B agree.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t xa = h ? xv[u][j].y : xv[u][j].x, xb = h ? xv[u][j].w : xv[u][j].z;
        const uint32_t b0 = __byte_perm(xa, xb, 0x5410), b1 = __byte_perm(xa, xb, 0x7632);
        const uint32_t wl = lo[u][j] >> (8 * h), wh = hi[u][j] >> (8 * h);
        mma_16x8x16<BF16>(acc, (wl & 0x000F000Fu) | MAGIC, (wh & 0x000F000Fu) | MAGIC,
                          ((wl >> 4) & 0x000F000Fu) | MAGIC, ((wh >> 4) & 0x000F000Fu) | MAGIC, b0, b1);
        mma_16x8x16<BF16>(xsum, ONES, ONES, ONES, ONES, b0, b1);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // rows g and g + 8
      const float sc = static_cast<float>(scale[u][r]), offset = static_cast<float>(bias[u][r]) - MAGIC_VALUE * sc;
      out[2 * r] = fmaf(sc, acc[2 * r], fmaf(offset, xsum[2 * r], out[2 * r]));
      out[2 * r + 1] = fmaf(sc, acc[2 * r + 1], fmaf(offset, xsum[2 * r + 1], out[2 * r + 1]));
    }
  }
}
template <typename H2, typename H>
__device__ __forceinline__ void load8_half(const H* p, float* out) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const H2* h = reinterpret_cast<const H2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = static_cast<float>(h[i].x);
    out[2 * i + 1] = static_cast<float>(h[i].y);
  }
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* out) { load8_half<__nv_bfloat162>(p, out); }
__device__ __forceinline__ void load8(const __half* p, float* out) { load8_half<__half2>(p, out); }
"""

# Template constants: T (activation dtype), BF16, GROUP. Shapes are read at run time (x_shape, w_shape, lora_b_shape),
# so one compiled kernel serves every product and row count: MLX compiles each instantiation of a custom kernel in
# every process (~1.3 s each on the H100 machine; it keeps only its own fused kernels on disk).
_QUANTIZED_BODY = """
  const int M = x_shape[0], K = x_shape[1], N = w_shape[0];
  const int WORDS = K / 8, GROUPS = K / GROUP, WARPS = blockDim.x / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;  // the lane's weight rows (g, g + 8) and input row (g); its quarter of a group
  const int n0 = blockIdx.x * 16;
  const uint32_t* w_lo = w + (size_t)(n0 + g) * WORDS + t * (GROUP / 32);
  const uint32_t* w_hi = w_lo + (size_t)8 * WORDS;
  const size_t s_lo = (size_t)(n0 + g) * GROUPS, s_hi = s_lo + (size_t)8 * GROUPS;
  // mma columns g >= M compute a copy of the last row's outputs, which is never stored.
  const T* x_row = x + (size_t)min(g, M - 1) * K + t * (GROUP / 32) * 8;
  float out[4] = {0.f, 0.f, 0.f, 0.f};  // D of all groups: outputs n0 + g, n0 + g + 8 for input rows 2t, 2t + 1
  // The block's warps take turns over the groups (neighbouring groups of its 16 rows at a time), 4 at once.
  constexpr int BATCH = GROUP <= 64 ? 4 : 2;
  const int steps = GROUPS / WARPS;
  int i = 0;
  for (; i + BATCH <= steps; i += BATCH)
    accumulate_groups<T, BF16, GROUP, BATCH>(w_lo, w_hi, x_row, scales, biases, s_lo, s_hi, i * WARPS + warp, WARPS, out);
  for (; i < steps; ++i)
    accumulate_groups<T, BF16, GROUP, 1>(w_lo, w_hi, x_row, scales, biases, s_lo, s_hi, i * WARPS + warp, WARPS, out);
  __shared__ float4 partial[MAX_WARPS][32];
  if (WARPS > 1) {
    partial[warp][lane] = make_float4(out[0], out[1], out[2], out[3]);
    __syncthreads();
    if (warp != 0) return;
    for (int i = 1; i < WARPS; ++i) {
      const float4 p = partial[i][lane];
      out[0] += p.x; out[1] += p.y; out[2] += p.z; out[3] += p.w;
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = n0 + g + 8 * (i >> 1), m = 2 * t + (i & 1);
    if (m < M) {
      float v = out[i];
      EPILOGUE
      y[(size_t)m * N + n] = static_cast<T>(v);
    }
  }
"""

# Dense weights (the LoRA's first factor, A stored (N = R, K)): t = x A^T for the few input rows, one block per
# output, its warps splitting K and adding up their partial sums in shared memory.
_DENSE_BODY = """
  const int M = x_shape[0], K = x_shape[1], N = w_shape[0];
  constexpr int WARPS = THREADS / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n = blockIdx.x;
  float acc[MAX_ROWS];
#pragma unroll
  for (int m = 0; m < MAX_ROWS; ++m) acc[m] = 0.f;
#pragma unroll 2
  for (int j = threadIdx.x; j < K / 8; j += THREADS) {
    float a[8];
    load8(w + (size_t)n * K + j * 8, a);
#pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
      if (m >= M) break;
      float xs[8];
      load8(x + (size_t)m * K + j * 8, xs);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[m] = fmaf(xs[e], a[e], acc[m]);
    }
  }
  __shared__ float partial[WARPS][MAX_ROWS];
#pragma unroll
  for (int m = 0; m < MAX_ROWS; ++m) {
    float v = acc[m];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
    if (lane == 0) partial[warp][m] = v;
  }
  __syncthreads();
  if (warp == 0 && lane < M) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < WARPS; ++i) v += partial[i][lane];
    y[(size_t)lane * N + n] = static_cast<T>(v);
  }
"""

_LORA = """
      // LoRA: the input's low-rank projection t = x A^T (M, R), times this output's row of B (stored (N, R)).
      const int R = lora_b_shape[1];
      for (int r = 0; r < R; ++r) v = fmaf(static_cast<float>(lora_t[m * R + r]), static_cast<float>(lora_b[(size_t)n * R + r]), v);"""
_RESIDUAL = """
      v += static_cast<float>(residual[(size_t)m * N + n]);"""

_kernels: dict[tuple[str, bool, bool], object] = {}


def enabled() -> bool:
    """Our CUDA kernels (this one, ``qk_rope``) run on CUDA only; BOBBY_CUDA_KERNELS=0 turns them off, for comparisons."""
    return (
        os.environ.get("BOBBY_CUDA_KERNELS", "1") != "0"
        and mx.default_device().type == mx.DeviceType.gpu
        and mx.cuda.is_available()
    )


def covers(x: mx.array, w: mx.array, group_size: int, bits: int) -> bool:
    """Whether the kernel computes ``x @ dequantize(w).T``: few rows of 16-bit floats, 4 bits, whole groups and tiles."""
    return (
        bits == BITS
        and x.size // x.shape[-1] <= MAX_ROWS
        and group_size in GROUP_SIZES
        and x.shape[-1] % group_size == 0
        and w.shape[0] % TILE == 0
        and x.dtype in (mx.bfloat16, mx.float16)
    )


def source_named_kernel(name: str, input_names: list[str], output_names: list[str], source: str, header: str = ""):
    """``mx.fast.cuda_kernel`` named after a hash of its source. MLX's kernel cache (``MLX_PTX_CACHE_DIR``) is keyed by
    name alone; 0.32.4 keeps only its own kernels there, but should it keep custom ones, a kernel whose source changed
    must not find an old build under its name."""
    digest = hashlib.sha1((header + source).encode()).hexdigest()[:12]
    return mx.fast.cuda_kernel(name=f"{name}_{digest}", input_names=input_names, output_names=output_names,
                               source=source, header=header)


def _kernel(weights: str, lora: bool, residual: bool):
    key = (weights, lora, residual)
    if key not in _kernels:
        inputs = ["x", "w"] + (["scales", "biases"] if weights == "quantized" else [])
        inputs += (["lora_t", "lora_b"] if lora else []) + (["residual"] if residual else [])
        body = _QUANTIZED_BODY if weights == "quantized" else _DENSE_BODY
        _kernels[key] = source_named_kernel(
            f"bobby_gemv_{weights}{'_lora' if lora else ''}{'_res' if residual else ''}",
            inputs,
            ["y"],
            body.replace("EPILOGUE", (_LORA if lora else "") + (_RESIDUAL if residual else "")),
            _HEADER,
        )
    return _kernels[key]


def warps_per_tile(n: int, groups: int) -> int:
    """Warps splitting each 16-output tile's groups: doubled while the product has fewer than ``TARGET_WARPS``."""
    warps = 1
    while warps < MAX_WARPS and n // TILE * warps < TARGET_WARPS and groups % (2 * warps) == 0:
        warps *= 2
    return warps


def _dense_product(x: mx.array, a: mx.array) -> mx.array:
    """x (M, K) @ a.T for a dense a (R, K): the LoRA's first factor."""
    rows, k = x.shape
    (t,) = _kernel("dense", False, False)(
        inputs=[x, a],
        template=[("T", x.dtype), ("MAX_ROWS", MAX_ROWS), ("THREADS", DENSE_THREADS)],
        grid=(a.shape[0] * DENSE_THREADS, 1, 1),
        threadgroup=(DENSE_THREADS, 1, 1),
        output_shapes=[(rows, a.shape[0])],
        output_dtypes=[x.dtype],
    )
    return t


def quantized_gemv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
                   lora: tuple[mx.array, mx.array] | None = None, residual: mx.array | None = None) -> mx.array:
    """``x @ dequantize(w).T`` (+ ``(x @ a.T) @ b.T`` for ``lora = (a, b)``, + ``residual``), x (..., K) -> (..., N).

    ``a`` is the LoRA's first factor stored (R, K), ``b`` its scaled second factor stored (N, R).
    """
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    rows = x.size // k
    x = x.reshape(rows, k)
    warps = warps_per_tile(n, k // group_size)
    inputs = [x, w, scales, biases]
    template = [("T", x.dtype), ("BF16", x.dtype == mx.bfloat16), ("GROUP", group_size), ("MAX_WARPS", MAX_WARPS)]
    if lora is not None:
        a, b = lora
        inputs += [_dense_product(x, a), b]
    if residual is not None:
        inputs.append(residual.reshape(rows, n))
    (y,) = _kernel("quantized", lora is not None, residual is not None)(
        inputs=inputs,
        template=template,
        grid=(n // TILE * warps * 32, 1, 1),
        threadgroup=(warps * 32, 1, 1),
        output_shapes=[(rows, n)],
        output_dtypes=[x.dtype],
    )
    return y.reshape(*lead, n)
