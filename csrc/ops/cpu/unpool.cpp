#include "ops/unpool.h"

#include <algorithm>
#include <vector>

namespace cnnviz {
namespace {

// Output index o whose window holds input position i at kernel offset k (i = o*s - pad + k*d),
// or -1 when there is none.
inline int64_t window_of(int64_t i, int k, int s, int pad, int d, int64_t out) {
  const int64_t t = i + pad - int64_t(k) * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t o = t / s;
  return o < out ? o : -1;
}

// Adds, to one input row, the outputs ow in [lo, hi) of one window row whose switch is k, each at
// its column iw = ow*sw + off. Each iw is reached by at most one ow here, so this is the (ky, kx)
// step of every element's gather, done for the whole row at once. Adding 0 where the switch
// differs leaves the sum bit-identical (it starts at +0 and can never become -0), and keeps the
// loop branch-free.
template <int SW>
inline void add_window_column(const float* __restrict yr, const uint8_t* __restrict sr,
                              float* __restrict xr, int64_t lo, int64_t hi, int64_t off,
                              int sw_runtime, uint8_t k) {
  const int64_t sw = SW > 0 ? SW : sw_runtime;
  for (int64_t ow = lo; ow < hi; ++ow) {
    const float v = yr[ow];  // loaded unconditionally so the select needs no branch
    xr[ow * sw + off] += sr[ow] == k ? v : 0.f;
  }
}

}  // namespace

void unpool_cpu(const float* y, const uint8_t* switches, float* x, const PoolGeometry& g) {
  const int64_t planes = g.N * g.C;
  if (planes == 0 || g.H == 0 || g.W == 0) return;

  // For each kx, the outputs [ow_lo, ow_hi) whose column iw = ow*sw + kx*dw - pad_left is in [0, W).
  std::vector<int64_t> ow_lo(g.kw), ow_hi(g.kw);
  for (int kx = 0; kx < g.kw; ++kx) {
    const int64_t off = int64_t(kx) * g.dw - g.pad_left;
    const int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
    const int64_t hi = g.W - 1 - off < 0 ? 0 : (g.W - 1 - off) / g.sw + 1;
    ow_lo[kx] = std::min(lo, g.OW);
    ow_hi[kx] = std::max(std::min(hi, g.OW), ow_lo[kx]);
  }

#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* yp = y + p * g.OH * g.OW;
    const uint8_t* sp = switches + p * g.OH * g.OW;
    float* xp = x + p * g.H * g.W;
    for (int64_t ih = 0; ih < g.H; ++ih) {
      float* xr = xp + ih * g.W;
      std::fill(xr, xr + g.W, 0.f);
      // Fixed order, ky ascending then kx ascending, so sums are bit-identical to the CUDA twin.
      for (int ky = 0; ky < g.kh; ++ky) {
        const int64_t oh = window_of(ih, ky, g.sh, g.pad_top, g.dh, g.OH);
        if (oh < 0) continue;
        const float* yr = yp + oh * g.OW;
        const uint8_t* sr = sp + oh * g.OW;
        for (int kx = 0; kx < g.kw; ++kx) {
          const int64_t off = int64_t(kx) * g.dw - g.pad_left;
          const uint8_t k = uint8_t(ky * g.kw + kx);
          const int64_t lo = ow_lo[kx], hi = ow_hi[kx];
          if (g.sw == 1) add_window_column<1>(yr, sr, xr, lo, hi, off, g.sw, k);
          else if (g.sw == 2) add_window_column<2>(yr, sr, xr, lo, hi, off, g.sw, k);
          else add_window_column<0>(yr, sr, xr, lo, hi, off, g.sw, k);
        }
      }
    }
  }
}

}  // namespace cnnviz
