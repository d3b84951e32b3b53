#include "ops/topk_merge.h"

#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>

#include "common/cuda_check.cuh"

namespace cnnviz {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // the unit loop strides over the rest

// (v, id) ranks before (wv, wid): higher value, then lower image id.
__device__ inline bool ranks_before(float v, int64_t id, float wv, int64_t wid) {
  return v > wv || (v == wv && id < wid);
}

// Puts a candidate that beats the row's last slot into its place; the last entry drops out.
__device__ inline void insert(float* sv, int64_t* si, int32_t* sp, int64_t k, float v, int64_t id,
                              int32_t pos) {
  int64_t j = k - 1;
  while (j > 0 && ranks_before(v, id, sv[j - 1], si[j - 1])) {
    sv[j] = sv[j - 1];
    si[j] = si[j - 1];
    sp[j] = sp[j - 1];
    --j;
  }
  sv[j] = v;
  si[j] = id;
  sp[j] = pos;
}

// One thread per unit walks the batch in order, so the result is deterministic; reads of
// values[b * U + u] are coalesced across a warp.
__global__ void topk_merge_kernel(float* __restrict__ state_values, int64_t* __restrict__ state_ids,
                                  int32_t* __restrict__ state_positions,
                                  const float* __restrict__ values,
                                  const int32_t* __restrict__ positions,
                                  const int64_t* __restrict__ image_ids, int64_t U, int64_t k,
                                  int64_t B) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < U;
       u += stride) {
    const int64_t row = u * k;
    float* sv = state_values + row;
    int64_t* si = state_ids + row;
    int32_t* sp = state_positions + row;
    // The value in the row's last slot: most candidates fail this one comparison.
    float worst = sv[k - 1];
    for (int64_t b = 0; b < B; ++b) {
      const float v = values[b * U + u];
      // >= lets a tie through to the id test; NaN fails every comparison, -inf fails the second.
      if (!(v >= worst) || !(v > -CUDART_INF_F)) continue;
      const int64_t id = image_ids[b];
      if (!ranks_before(v, id, sv[k - 1], si[k - 1])) continue;
      insert(sv, si, sp, k, v, id, positions[b * U + u]);
      worst = sv[k - 1];
    }
  }
}

}  // namespace

void topk_merge_cuda(float* state_values, int64_t* state_ids, int32_t* state_positions,
                     const float* values, const int32_t* positions, const int64_t* image_ids,
                     const TopKShape& s, void* stream) {
  const int64_t U = s.units, k = s.k, B = s.batch;
  if (U <= 0 || k <= 0 || B <= 0) return;
  const int64_t blocks = std::min((U + kThreads - 1) / kThreads, kMaxBlocks);
  topk_merge_kernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                      static_cast<cudaStream_t>(stream)>>>(
      state_values, state_ids, state_positions, values, positions, image_ids, U, k, B);
  CNNVIZ_CHECK_LAUNCH("topk_merge_kernel");
}

}  // namespace cnnviz
