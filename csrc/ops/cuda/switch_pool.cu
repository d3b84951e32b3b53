#include "ops/switch_pool.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda_check.cuh"

namespace cnnviz {
namespace {

// v replaces the running max b when v > b, or when v is NaN and b is not: `!(v <= b)` is true for
// v > b and for a NaN on either side, and `b == b` keeps a NaN already held (first NaN wins).
__device__ __forceinline__ bool takes(float v, float b) { return !(v <= b) & (b == b); }

// One thread per output; the same window body as pool_window in the CPU twin.
__global__ void switch_pool_kernel(const float* __restrict__ x, float* __restrict__ y,
                                   uint8_t* __restrict__ switches, PoolGeometry g,
                                   int64_t total) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = i % g.OW;
    const int64_t oh = (i / g.OW) % g.OH;
    const int64_t p = i / (g.OW * g.OH);
    const float* xp = x + p * g.H * g.W;
    const int64_t ih0 = oh * g.sh - g.pad_top;
    const int64_t iw0 = ow * g.sw - g.pad_left;
    float best = -INFINITY;
    uint8_t arg = kNoSwitch;
    for (int ky = 0; ky < g.kh; ++ky) {
      const int64_t ih = ih0 + int64_t(ky) * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int kx = 0; kx < g.kw; ++kx) {
        const int64_t iw = iw0 + int64_t(kx) * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        const float v = __ldg(xp + ih * g.W + iw);
        // The first valid element is taken even when it is -inf, so only an all-padding window
        // keeps switch 255.
        if (arg == kNoSwitch || takes(v, best)) {
          best = v;
          arg = uint8_t(ky * g.kw + kx);
        }
      }
    }
    y[i] = best;
    switches[i] = arg;
  }
}

}  // namespace

void switch_pool_cuda(const float* x, float* y, uint8_t* switches, const PoolGeometry& g,
                      void* stream) {
  const int64_t total = g.N * g.C * g.OH * g.OW;
  if (total == 0) return;
  constexpr int kThreads = 256;
  // The grid-stride loop covers whatever the capped grid does not.
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  switch_pool_kernel<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, y, switches, g, total);
  CNNVIZ_CHECK_LAUNCH("switch_pool_kernel");
}

}  // namespace cnnviz
