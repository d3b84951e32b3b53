#include "ops/unit_max.h"

#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>

#include "common/cuda_check.cuh"

namespace cnnviz {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;                   // 8 warps per block, one row per warp
constexpr int kRowsPerBlock = kThreads / kWarp;
constexpr int64_t kMaxBlocks = 65535;           // the row loop strides over the rest
constexpr unsigned kFullMask = 0xffffffffu;

// Rows are walked one per warp, so every lane of a warp runs the same iterations and the
// shuffles and ballots below see all 32 lanes.
__global__ void unit_max_kernel(const float* __restrict__ a, float* __restrict__ values,
                                int32_t* __restrict__ positions, int64_t rows, int64_t hw) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
       row < rows; row += warps) {
    const float* r = a + row * hw;
    // Largest number in the row; NaN never wins because every comparison with it is false, and a
    // row with no number keeps the starting -inf.
    float m = -CUDART_INF_F;
    for (int64_t i = lane; i < hw; i += kWarp) m = r[i] > m ? r[i] : m;
    for (int off = kWarp / 2; off > 0; off /= 2) {
      const float o = __shfl_xor_sync(kFullMask, m, off);
      m = o > m ? o : m;
    }
    // First index holding m, or -1 (NaN equals nothing, so an all-NaN row gives -1; a row of -inf
    // and NaN finds its first -inf). Blocks of 32 are tested whole; the lowest set bit is first.
    int64_t pos = -1;
    for (int64_t base = 0; base < hw; base += kWarp) {
      const int64_t i = base + lane;
      const unsigned hit = __ballot_sync(kFullMask, i < hw && r[i] == m);
      if (hit != 0) {
        pos = base + __ffs(hit) - 1;
        break;
      }
    }
    if (lane == 0) {
      // The value is read back at the position, so +0 and -0 ties report the sign of the winner.
      values[row] = pos < 0 ? -CUDART_INF_F : r[pos];
      positions[row] = static_cast<int32_t>(pos);
    }
  }
}

}  // namespace

void unit_max_cuda(const float* a, float* values, int32_t* positions, int64_t rows, int64_t hw,
                   void* stream) {
  if (rows <= 0) return;
  const int64_t blocks = std::min((rows + kRowsPerBlock - 1) / kRowsPerBlock, kMaxBlocks);
  unit_max_kernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                    static_cast<cudaStream_t>(stream)>>>(a, values, positions, rows, hw);
  CNNVIZ_CHECK_LAUNCH("unit_max_kernel");
}

}  // namespace cnnviz
