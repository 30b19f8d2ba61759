"""A 4-bit matrix-vector kernel of our own for CUDA, for the few rows that decoding multiplies.

MLX's own 4-bit product for one row reads the weights at 0.6-0.8 TB/s on an H100 (a quarter to a third of the card's
bandwidth), and for 4 rows it takes ~3.5x as long as for one: decoding is memory-bound, so that is where a token's time
goes. This kernel reads each weight once for up to ``MAX_ROWS`` input rows and folds in what follows the product in a
decoder block: the LoRA update's second factor and the residual sum, which would each be one more MLX op (~7 us each on
CUDA, whatever their size).

Layout (mlx-community's affine quantization): ``w`` (N, K/8) uint32, eight 4-bit values per word, lowest bits first;
``scales`` and ``biases`` (N, K/group). Value = scale * q + bias. A block computes ``BLOCK_OUTPUTS`` outputs for all M
input rows: each lane dequantizes one word of each of those weight rows at a time, once for all M rows; the block's
warps split K between them and add up their partial sums in shared memory (wide products use one-warp blocks). The
LoRA's first product, t = x A^T (R outputs), runs through the same kernel shape with dense weights.

On Metal and on the CPU, and for shapes the kernel does not cover, ``Linear`` uses ``mx.quantized_matmul``.
"""

from __future__ import annotations

import hashlib
import os

import mlx.core as mx

# Input rows per call (drafts decoding together). From 5 rows on MLX switches to a tensor-core kernel that beats this
# one (8 rows, 8B shape: gate/up 50 vs 103 us); prompts go through mx.quantized_matmul too.
MAX_ROWS = 4
BITS = 4
BLOCK_OUTPUTS = 4  # outputs per block: each input load serves this many weight rows
THREADS = 128  # per block, for products of fewer than WIDE outputs: the block's warps split K
WIDE = 16384  # from this many outputs on, blocks of one warp: enough blocks already (gate/up 34 vs 38 us, head 154 vs 178)

_HEADER = """
__device__ __forceinline__ void load8(const float* p, float* out) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w; out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
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

# Template constants: T (activation dtype), M (input rows), K (in features), N (out features), ROWS (outputs per
# block). The block's WARPS warps split K between them (enough loads in flight for the small products of a block,
# which one warp per output left waiting on memory), then add up their partial sums in shared memory.
_REDUCE_AND_WRITE = """
  __shared__ float partial[WARPS][ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
      if (lane == 0) partial[warp][r][m] = v;
    }
  __syncthreads();
  if (warp == 0 && lane < ROWS * M) {
    const int r = lane / M, m = lane % M, n = n0 + r;
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < WARPS; ++i) v += partial[i][r][m];
    EPILOGUE
    y[(size_t)m * N + n] = static_cast<T>(v);
  }
"""

_PROLOGUE = """
  constexpr int WORDS = K / 8;  // 8 inputs per step of a lane: one packed word
  constexpr int WARPS = THREADS / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = blockIdx.x * ROWS;
  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
"""

# Quantized weights: each lane dequantizes a word of each of its ROWS weight rows once, for all M input rows, using
# sum(x * (s * q + b)) = s * sum(x * q) + b * sum(x) over the word's 8 inputs (one group).
_QUANTIZED_BODY = _PROLOGUE + """
  constexpr int GROUPS = K / GROUP;
#pragma unroll 2
  for (int j = warp * 32 + lane; j < WORDS; j += THREADS) {
    float q[ROWS][8], scale[ROWS], bias[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const uint32_t word = __ldg(w + (size_t)(n0 + r) * WORDS + j);
      const size_t g = (size_t)(n0 + r) * GROUPS + (j * 8) / GROUP;
      scale[r] = static_cast<float>(scales[g]);
      bias[r] = static_cast<float>(biases[g]);
      // 2^23 + q as a float's bits, minus 2^23: full-rate integer and add ops instead of the quarter-rate convert.
#pragma unroll
      for (int e = 0; e < 8; ++e) q[r][e] = __uint_as_float(0x4B000000u | ((word >> (4 * e)) & 0xFu)) - 8388608.f;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xs[8];
      load8(x + (size_t)m * K + j * 8, xs);
      float xsum = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) xsum += xs[e];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(xs[e], q[r][e], dot);
        acc[r][m] = fmaf(scale[r], dot, fmaf(bias[r], xsum, acc[r][m]));
      }
    }
  }
""" + _REDUCE_AND_WRITE

# Dense weights (the LoRA's first factor, A stored (R, K)): t = x A for the few input rows, one block per output.
_DENSE_BODY = _PROLOGUE + """
#pragma unroll 2
  for (int j = warp * 32 + lane; j < WORDS; j += THREADS) {
    float a[ROWS][8];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) load8(w + (size_t)(n0 + r) * K + j * 8, a[r]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xs[8];
      load8(x + (size_t)m * K + j * 8, xs);
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(xs[e], a[r][e], acc[r][m]);
    }
  }
""" + _REDUCE_AND_WRITE

_LORA = """
    // LoRA: the input's low-rank projection t = x A (M, R), times this output's column of B (stored (N, R)).
#pragma unroll
    for (int i = 0; i < R; ++i) v = fmaf(static_cast<float>(lora_t[m * R + i]), static_cast<float>(lora_b[(size_t)n * R + i]), v);"""
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
    """Whether the kernel computes ``x @ dequantize(w).T``: few rows, 4 bits, whole words and groups, whole blocks."""
    rows = x.size // x.shape[-1]
    k, n = x.shape[-1], w.shape[0]
    return (
        bits == BITS
        and rows <= MAX_ROWS
        and group_size % 8 == 0  # a word's 8 inputs share a group (and rows start 16-byte aligned)
        and k % group_size == 0
        and n % BLOCK_OUTPUTS == 0
        and x.dtype in (mx.bfloat16, mx.float16, mx.float32)
    )


def source_named_kernel(name: str, input_names: list[str], output_names: list[str], source: str, header: str = ""):
    """``mx.fast.cuda_kernel`` named after a hash of its source: MLX keeps compiled kernels on disk by name alone
    (``MLX_PTX_CACHE_DIR``), so a kernel whose source changed must not reuse an old name."""
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


def _launch(weights: str, inputs: list[mx.array], template: list, rows: int, n: int, rows_per_block: int,
            lora: bool = False, residual: bool = False) -> mx.array:
    threads = 32 if n >= WIDE else THREADS
    (y,) = _kernel(weights, lora, residual)(
        inputs=inputs,
        template=template + [("ROWS", rows_per_block), ("THREADS", threads)],
        grid=(n // rows_per_block * threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[(rows, n)],
        output_dtypes=[inputs[0].dtype],
    )
    return y


def quantized_gemv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
                   lora: tuple[mx.array, mx.array] | None = None, residual: mx.array | None = None) -> mx.array:
    """``x @ dequantize(w).T`` (+ ``(x @ a.T) @ b.T`` for ``lora = (a, b)``, + ``residual``), x (..., K) -> (..., N).

    ``a`` is the LoRA's first factor stored (R, K), ``b`` its scaled second factor stored (N, R).
    """
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    rows = x.size // k
    x = x.reshape(rows, k)
    inputs = [x, w, scales, biases]
    template = [("T", x.dtype), ("M", rows), ("K", k), ("N", n), ("GROUP", group_size)]
    if lora is not None:
        a, b = lora
        t = _launch("dense", [x, a], [("T", x.dtype), ("M", rows), ("K", k), ("N", a.shape[0])], rows, a.shape[0], 1)
        inputs += [t, b]
        template.append(("R", b.shape[1]))
    if residual is not None:
        inputs.append(residual.reshape(rows, n))
    y = _launch("quantized", inputs, template, rows, n, BLOCK_OUTPUTS, lora is not None, residual is not None)
    return y.reshape(*lead, n)
