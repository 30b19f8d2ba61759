// Attention of a one-token step for rows at their own positions (a server's left-padded batch), in one kernel.
// Launched by attention.py through mx.fast.cuda_kernel, which compiles this file as the header of a generated
// kernel whose body calls decode_attention.
//
// q (rows, HEADS, 1, D); keys and values: a layer's whole cache buffers (rows, KV_HEADS, capacity, D), of which row
// r attends to positions start[r] .. start[r] + position[r] (its own tokens, the new one last; before start[r] is
// its left padding). One block per (row, head), its 32 warps taking every 32nd key, each lane D / 32 elements of a
// key: a warp's dot product is one shuffle reduction, its softmax runs online (a running maximum and sum), and the
// warps' partial results meet in shared memory. Sums in float; the output rounds once, to T.

namespace bobby {

template <typename T, int HEADS, int KV_HEADS, int D>
__device__ __forceinline__ void decode_attention(const T* q, const T* keys, const T* values, const int32_t* start,
                                                 const int32_t* position, T* out, int capacity, float scale) {
  constexpr int WARPS = 32;
  constexpr int PER_LANE = D / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x / HEADS, head = blockIdx.x % HEADS;
  const int kv_head = head / (HEADS / KV_HEADS);
  const size_t cache_offset = ((size_t)row * KV_HEADS + kv_head) * capacity * D + lane * PER_LANE;
  const T* k = keys + cache_offset;
  const T* v = values + cache_offset;
  const T* q_row = q + (size_t)blockIdx.x * D + lane * PER_LANE;
  float qv[PER_LANE], acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    qv[i] = static_cast<float>(q_row[i]) * scale;
    acc[i] = 0.f;
  }
  const int first = start[row], end = start[row] + position[row] + 1;
  float running_max = -INFINITY, running_sum = 0.f;
  for (int j = first + warp; j < end; j += WARPS) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) dot = fmaf(qv[i], static_cast<float>(k[(size_t)j * D + i]), dot);
#pragma unroll
    for (int delta = 16; delta > 0; delta >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, delta);
    const float new_max = fmaxf(running_max, dot);
    const float factor = __expf(running_max - new_max), weight = __expf(dot - new_max);
    running_sum = fmaf(running_sum, factor, weight);
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) acc[i] = fmaf(acc[i], factor, weight * static_cast<float>(v[(size_t)j * D + i]));
    running_max = new_max;
  }
  __shared__ float warp_max[WARPS], warp_sum[WARPS];
  __shared__ float warp_acc[WARPS][D];
  if (lane == 0) warp_max[warp] = running_max, warp_sum[warp] = running_sum;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) warp_acc[warp][lane * PER_LANE + i] = acc[i];
  __syncthreads();
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float overall_max = -INFINITY;
    for (int w = 0; w < WARPS; ++w) overall_max = fmaxf(overall_max, warp_max[w]);
    float total = 0.f, value = 0.f;
    for (int w = 0; w < WARPS; ++w) {
      const float factor = warp_sum[w] > 0.f ? __expf(warp_max[w] - overall_max) : 0.f;  // a warp without keys
      total = fmaf(warp_sum[w], factor, total);
      value = fmaf(warp_acc[w][e], factor, value);
    }
    out[(size_t)blockIdx.x * D + e] = static_cast<T>(value / total);
  }
}

}  // namespace bobby
