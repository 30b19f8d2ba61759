// A 4-bit matrix-vector product on the tensor cores for the few rows that decoding multiplies, with what follows it
// in a decoder block folded in (the LoRA update's second factor, the residual sum); and a small float product for
// the LoRA's first factor. Launched by gemv.py through mx.fast.cuda_kernel, which compiles this file as the header
// of a generated kernel whose body calls quantized_gemv or dense_gemv (MLX's CUDA preamble comes first: cuda_bf16.h,
// cuda_fp16.h, <cstdint>).
//
// Layout (mlx-community's affine quantization): w (N, K/8) uint32, eight 4-bit values per word, lowest bits first;
// scales and biases (N, K/GROUP). Value = scale * q + bias. A warp owns 16 outputs; the 4 lanes of each mma "quad"
// hold one row's words of a quantization group between them, so every mma sums inputs of one group and the group's
// scale and bias apply to its float result:
//
//     sum_k x_k (s q_k + b) = s * sum_k x_k (MAGIC + q_k) + (b - MAGIC s) * sum_k x_k
//
// MAGIC + q is a 16-bit float made from the packed nibbles with one AND and one OR (q in the low mantissa bits of
// 128.0 in bf16, of 1024.0 in fp16: exact), and sum_k x_k comes from an mma with a matrix of ones. The block's warps
// split K; their partial sums meet in shared memory.

namespace bobby {

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

// Adds BATCH groups' sums to out (see quantized_gemv): loads of all BATCH groups first, so they are in flight
// together, then their arithmetic. Each weight fragment, unpacked once, meets COLS tiles of 8 input rows.
template <typename T, bool BF16, int GROUP, int BATCH, int COLS>
__device__ __forceinline__ void accumulate_groups(const uint32_t* w_lo, const uint32_t* w_hi, const T* const* x_row,
                                                  const T* scales, const T* biases, size_t s_lo, size_t s_hi,
                                                  int group, int group_stride, float (*out)[4]) {
  constexpr int LANE_WORDS = GROUP / 32;  // a lane's words of each group: the quad's 4 lanes hold the group
  constexpr uint32_t MAGIC = BF16 ? 0x43004300u : 0x64006400u;  // (128, 128) in bf16, (1024, 1024) in fp16
  constexpr float MAGIC_VALUE = BF16 ? 128.f : 1024.f;
  constexpr uint32_t ONES = BF16 ? 0x3F803F80u : 0x3C003C00u;
  uint32_t lo[BATCH][LANE_WORDS], hi[BATCH][LANE_WORDS];
  uint4 xv[BATCH][COLS][LANE_WORDS];
  T scale[BATCH][2], bias[BATCH][2];
#pragma unroll
  for (int u = 0; u < BATCH; ++u) {
    const int gr = group + u * group_stride;
    load_words<LANE_WORDS>(w_lo + gr * (GROUP / 8), lo[u]);
    load_words<LANE_WORDS>(w_hi + gr * (GROUP / 8), hi[u]);
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
#pragma unroll
      for (int j = 0; j < LANE_WORDS; ++j)
        xv[u][c][j] = __ldg(reinterpret_cast<const uint4*>(x_row[c] + gr * GROUP + j * 8));
    }
    scale[u][0] = __ldg(scales + s_lo + gr), scale[u][1] = __ldg(scales + s_hi + gr);
    bias[u][0] = __ldg(biases + s_lo + gr), bias[u][1] = __ldg(biases + s_hi + gr);
  }
#pragma unroll
  for (int u = 0; u < BATCH; ++u) {
    float acc[COLS][4], xsum[COLS][4];
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[c][i] = xsum[c][i] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < LANE_WORDS; ++j) {
      // The word's 8 inputs x0..x7 go to the mma as pairs (x0, x4), (x1, x5) | (x2, x6), (x3, x7): the pairs of
      // nibbles one mask takes from a word (bits 0-3 and 16-19, then shifted by 4, 8, 12). The mma's sum does not
      // care which of its 16 columns holds which input, as long as A and B agree.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t wl = lo[u][j] >> (8 * h), wh = hi[u][j] >> (8 * h);
        const uint32_t a0 = (wl & 0x000F000Fu) | MAGIC, a1 = (wh & 0x000F000Fu) | MAGIC;
        const uint32_t a2 = ((wl >> 4) & 0x000F000Fu) | MAGIC, a3 = ((wh >> 4) & 0x000F000Fu) | MAGIC;
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
          const uint32_t xa = h ? xv[u][c][j].y : xv[u][c][j].x, xb = h ? xv[u][c][j].w : xv[u][c][j].z;
          const uint32_t b0 = __byte_perm(xa, xb, 0x5410), b1 = __byte_perm(xa, xb, 0x7632);
          mma_16x8x16<BF16>(acc[c], a0, a1, a2, a3, b0, b1);
          mma_16x8x16<BF16>(xsum[c], ONES, ONES, ONES, ONES, b0, b1);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // rows g and g + 8
      const float sc = static_cast<float>(scale[u][r]), offset = static_cast<float>(bias[u][r]) - MAGIC_VALUE * sc;
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        out[c][2 * r] = fmaf(sc, acc[c][2 * r], fmaf(offset, xsum[c][2 * r], out[c][2 * r]));
        out[c][2 * r + 1] = fmaf(sc, acc[c][2 * r + 1], fmaf(offset, xsum[c][2 * r + 1], out[c][2 * r + 1]));
      }
    }
  }
}

// y (M, N) = x (M, K) @ dequantize(w).T, + lora_t (M, R) @ lora_b.T (lora_b stored (N, R)) with LORA, + residual
// (M, N) with RESIDUAL. One warp per 16 outputs times blockDim.x / 32 warps splitting K (at most MAX_WARPS); M <= 8
// COLS: COLS tiles of the mma's 8 columns, so the weights are read once for all the rows. Shapes come at run time, so
// one compiled kernel serves every product and every row count up to 8 COLS.
template <typename T, bool BF16, int GROUP, int MAX_WARPS, int COLS, bool LORA, bool RESIDUAL>
__device__ __forceinline__ void quantized_gemv(const T* x, const uint32_t* w, const T* scales, const T* biases,
                                               const T* lora_t, const T* lora_b, const T* residual, T* y, int M, int K,
                                               int N, int R) {
  const int WORDS = K / 8, GROUPS = K / GROUP, WARPS = blockDim.x / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // the lane's weight rows (g, g + 8) and input rows (g + 8c); its quarter of a group
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const uint32_t* w_lo = w + (size_t)(n0 + g) * WORDS + t * (GROUP / 32);
  const uint32_t* w_hi = w_lo + (size_t)8 * WORDS;
  const size_t s_lo = (size_t)(n0 + g) * GROUPS, s_hi = s_lo + (size_t)8 * GROUPS;
  // mma columns past M compute a copy of the last row's outputs, which is never stored.
  const T* x_row[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) x_row[c] = x + (size_t)min(g + 8 * c, M - 1) * K + t * (GROUP / 32) * 8;
  // D of all groups: outputs n0 + g, n0 + g + 8 for input rows 8c + 2t, 8c + 2t + 1
  float out[COLS][4];
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[c][i] = 0.f;
  }
  // The block's warps take turns over the groups (neighbouring groups of its 16 rows at a time), BATCH at once; with
  // more input tiles fewer groups at once, so a lane's inputs stay in registers.
  constexpr int BATCH_ONE_TILE = GROUP <= 64 ? 4 : 2;
  constexpr int BATCH = BATCH_ONE_TILE / COLS > 0 ? BATCH_ONE_TILE / COLS : 1;
  const int steps = GROUPS / WARPS;
  int i = 0;
  for (; i + BATCH <= steps; i += BATCH)
    accumulate_groups<T, BF16, GROUP, BATCH, COLS>(w_lo, w_hi, x_row, scales, biases, s_lo, s_hi, i * WARPS + warp,
                                                   WARPS, out);
  for (; i < steps; ++i)
    accumulate_groups<T, BF16, GROUP, 1, COLS>(w_lo, w_hi, x_row, scales, biases, s_lo, s_hi, i * WARPS + warp, WARPS,
                                               out);
  __shared__ float4 partial[MAX_WARPS][COLS][32];
  if (WARPS > 1) {
#pragma unroll
    for (int c = 0; c < COLS; ++c) partial[warp][c][lane] = make_float4(out[c][0], out[c][1], out[c][2], out[c][3]);
    __syncthreads();
    if (warp != 0) return;
    for (int i = 1; i < WARPS; ++i) {
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        const float4 p = partial[i][c][lane];
        out[c][0] += p.x; out[c][1] += p.y; out[c][2] += p.z; out[c][3] += p.w;
      }
    }
  }
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = n0 + g + 8 * (i >> 1), m = 8 * c + 2 * t + (i & 1);
      if (m < M) {
        float v = out[c][i];
        if constexpr (LORA) {  // the input's low-rank projection t = x A^T (M, R), times this output's row of B
          for (int r = 0; r < R; ++r)
            v = fmaf(static_cast<float>(lora_t[m * R + r]), static_cast<float>(lora_b[(size_t)n * R + r]), v);
        }
        if constexpr (RESIDUAL) v += static_cast<float>(residual[(size_t)m * N + n]);
        y[(size_t)m * N + n] = static_cast<T>(v);
      }
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

// y (M, N) = x (M, K) @ w.T for a dense w (N, K): the LoRA's first factor. One block per output, its THREADS / 32
// warps splitting K and adding up their partial sums in shared memory; M <= MAX_ROWS.
template <typename T, int MAX_ROWS, int THREADS>
__device__ __forceinline__ void dense_gemv(const T* x, const T* w, T* y, int M, int K, int N) {
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
}

}  // namespace bobby
