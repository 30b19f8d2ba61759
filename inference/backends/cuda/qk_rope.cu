// The attention inputs of a one-token step in one kernel: split the fused q/k/v projection's output, RMSNorm q and k
// per head, rotate them (RoPE, non-traditional: pairs (i, i + head_dim / 2)). Launched by qk_rope.py through
// mx.fast.cuda_kernel, which compiles this file as the header of a generated kernel whose body calls qk_rope.
//
// qkv (rows, (HEADS + 2 KV_HEADS) * HEAD_DIM) -> q (rows, HEADS, 1, HEAD_DIM), k and v (rows, KV_HEADS, 1, HEAD_DIM),
// the layout attention reads. One warp per (row, head); each lane takes HEAD_DIM / 64 pairs. It rounds where MLX's
// ops do (after the norm, after the rotation). offset: the new token's position, one for all rows, or with PER_ROW
// one per row (a server's batch of left-padded rows).

namespace bobby {

template <typename T, int HEADS, int KV_HEADS, int HEAD_DIM, bool PER_ROW>
__device__ __forceinline__ void qk_rope(const T* qkv, const T* q_norm, const T* k_norm, const int32_t* offset, T* q,
                                        T* k, T* v, int rows, float eps, float log2_base) {
  constexpr int HEADS_ALL = HEADS + 2 * KV_HEADS;
  constexpr int PAIRS = HEAD_DIM / 64;  // rotation pairs per lane
  constexpr int HALF = HEAD_DIM / 2;
  const int lane = threadIdx.x & 31;
  const int task = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (task >= rows * HEADS_ALL) return;
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
  for (int delta = 16; delta > 0; delta >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, delta);
  const float inv_rms = rsqrtf(ss / HEAD_DIM + eps);
  const bool is_q = head < HEADS;
  const T* weight = is_q ? q_norm : k_norm;
  T* out = is_q ? q + ((size_t)m * HEADS + head) * HEAD_DIM : k + ((size_t)m * KV_HEADS + head - HEADS) * HEAD_DIM;
  const float position = static_cast<float>(offset[PER_ROW ? m : 0]);
#pragma unroll
  for (int p = 0; p < PAIRS; ++p) {
    const int i = lane + 32 * p;
    const float a = static_cast<float>(static_cast<T>(lo[p] * inv_rms * static_cast<float>(weight[i])));
    const float b = static_cast<float>(static_cast<T>(hi[p] * inv_rms * static_cast<float>(weight[HALF + i])));
    float s, c;
    sincosf(position * exp2f(-static_cast<float>(i) * (log2_base / HALF)), &s, &c);
    out[i] = static_cast<T>(a * c - b * s);
    out[HALF + i] = static_cast<T>(a * s + b * c);
  }
}

}  // namespace bobby
