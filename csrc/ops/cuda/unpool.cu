#include "ops/unpool.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda_check.cuh"

namespace cnnviz {
namespace {

// Output index o whose window holds input position i at kernel offset k (i = o*s - pad + k*d),
// or -1 when there is none.
__device__ __forceinline__ int64_t window_of(int64_t i, int k, int s, int pad, int d,
                                             int64_t out) {
  const int64_t t = i + pad - int64_t(k) * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t o = t / s;
  return o < out ? o : -1;
}

// One thread per input element: a gather, so no atomics.
__global__ void unpool_kernel(const float* __restrict__ y, const uint8_t* __restrict__ switches,
                              float* __restrict__ x, PoolGeometry g, int64_t total) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = i % g.W;
    const int64_t ih = (i / g.W) % g.H;
    const int64_t p = i / (g.W * g.H);
    const float* yp = y + p * g.OH * g.OW;
    const uint8_t* sp = switches + p * g.OH * g.OW;
    // Fixed order, ky ascending then kx ascending, so sums are bit-identical to the CPU twin.
    float acc = 0.f;
    for (int ky = 0; ky < g.kh; ++ky) {
      const int64_t oh = window_of(ih, ky, g.sh, g.pad_top, g.dh, g.OH);
      if (oh < 0) continue;
      for (int kx = 0; kx < g.kw; ++kx) {
        const int64_t ow = window_of(iw, kx, g.sw, g.pad_left, g.dw, g.OW);
        if (ow < 0) continue;
        const int64_t o = oh * g.OW + ow;
        if (sp[o] == ky * g.kw + kx) acc += yp[o];
      }
    }
    x[i] = acc;
  }
}

}  // namespace

void unpool_cuda(const float* y, const uint8_t* switches, float* x, const PoolGeometry& g,
                 void* stream) {
  const int64_t total = g.N * g.C * g.H * g.W;
  if (total == 0) return;
  constexpr int kThreads = 256;
  // The grid-stride loop covers whatever the capped grid does not.
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  unpool_kernel<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      y, switches, x, g, total);
  CNNVIZ_CHECK_LAUNCH("unpool_kernel");
}

}  // namespace cnnviz
