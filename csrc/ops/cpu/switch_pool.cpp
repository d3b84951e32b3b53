#include "ops/switch_pool.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace cnnviz {
namespace {

// v replaces the running max b when v > b, or when v is NaN and b is not: `!(v <= b)` is true for
// v > b and for a NaN on either side, and `b == b` keeps a NaN already held (first NaN wins).
// Bitwise & rather than && keeps the vectorised loop free of branches.
inline bool takes(float v, float b) { return !(v <= b) & (b == b); }

// Any window, padding checked per element. The CUDA kernel runs this same body per output.
inline void pool_window(const float* xp, float* yo, uint8_t* so, int64_t oh, int64_t ow,
                        const PoolGeometry& g) {
  const int64_t ih0 = oh * g.sh - g.pad_top;
  const int64_t iw0 = ow * g.sw - g.pad_left;
  float best = -std::numeric_limits<float>::infinity();
  uint8_t arg = kNoSwitch;
  for (int ky = 0; ky < g.kh; ++ky) {
    const int64_t ih = ih0 + int64_t(ky) * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (int kx = 0; kx < g.kw; ++kx) {
      const int64_t iw = iw0 + int64_t(kx) * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      const float v = xp[ih * g.W + iw];
      // The first valid element is taken even when it is -inf, so only an all-padding window
      // keeps switch 255.
      if (arg == kNoSwitch || takes(v, best)) {
        best = v;
        arg = uint8_t(ky * g.kw + kx);
      }
    }
  }
  *yo = best;
  *so = arg;
}

// Outputs [lo, hi) along one axis whose windows lie wholly inside [0, size): no padding checks.
inline void interior_range(int64_t size, int64_t out, int k, int s, int pad, int d,
                           int64_t* lo, int64_t* hi) {
  const int64_t span = int64_t(k - 1) * d;
  *lo = std::min<int64_t>((pad + s - 1) / s, out);
  const int64_t last = size - 1 - span + pad;  // largest valid window start, shifted by pad
  *hi = last < 0 ? 0 : std::min<int64_t>(last / s + 1, out);
  *hi = std::max(*hi, *lo);
}

// Interior of one output row: n windows, the first with origin x0. Window elements are the outer
// loops (row-major, so the first maximum still wins) and outputs the inner loop, a plain strided
// load + compare + select that the compiler vectorises. The running switch lives in an int32
// buffer so every lane is 32 bits wide; __restrict because a uint8 store could alias anything.
template <int SW>
inline void pool_row_interior(const float* __restrict x0, float* __restrict yr,
                              uint8_t* __restrict sr, int32_t* __restrict arg, int64_t n,
                              const PoolGeometry& g) {
  const int64_t sw = SW > 0 ? SW : g.sw;
  for (int64_t j = 0; j < n; ++j) {
    yr[j] = x0[j * sw];
    arg[j] = 0;
  }
  for (int ky = 0; ky < g.kh; ++ky) {
    for (int kx = (ky == 0 ? 1 : 0); kx < g.kw; ++kx) {
      const float* __restrict xk = x0 + int64_t(ky) * g.dh * g.W + int64_t(kx) * g.dw;
      const int32_t k = ky * g.kw + kx;
      for (int64_t j = 0; j < n; ++j) {
        const float v = xk[j * sw];
        const bool t = takes(v, yr[j]);
        yr[j] = t ? v : yr[j];
        arg[j] = t ? k : arg[j];
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) sr[j] = uint8_t(arg[j]);
}

}  // namespace

void switch_pool_cpu(const float* x, float* y, uint8_t* switches, const PoolGeometry& g) {
  const int64_t planes = g.N * g.C;
  if (planes == 0 || g.OH == 0 || g.OW == 0) return;
  int64_t oh_lo, oh_hi, ow_lo, ow_hi;
  interior_range(g.H, g.OH, g.kh, g.sh, g.pad_top, g.dh, &oh_lo, &oh_hi);
  interior_range(g.W, g.OW, g.kw, g.sw, g.pad_left, g.dw, &ow_lo, &ow_hi);

#pragma omp parallel
  {
    std::vector<int32_t> arg(g.OW);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float* xp = x + p * g.H * g.W;
      float* yp = y + p * g.OH * g.OW;
      uint8_t* sp = switches + p * g.OH * g.OW;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        float* yr = yp + oh * g.OW;
        uint8_t* sr = sp + oh * g.OW;
        const bool row_inside = oh >= oh_lo && oh < oh_hi;
        const int64_t a = row_inside ? ow_lo : g.OW;  // interior columns [a, b) of this row
        const int64_t b = row_inside ? ow_hi : g.OW;
        for (int64_t ow = 0; ow < a; ++ow) pool_window(xp, yr + ow, sr + ow, oh, ow, g);
        if (b > a) {
          const float* x0 = xp + (oh * g.sh - g.pad_top) * g.W + (a * g.sw - g.pad_left);
          const int64_t n = b - a;
          // A stride known at compile time lets the compiler vectorise the strided loads.
          if (g.sw == 1) pool_row_interior<1>(x0, yr + a, sr + a, arg.data(), n, g);
          else if (g.sw == 2) pool_row_interior<2>(x0, yr + a, sr + a, arg.data(), n, g);
          else pool_row_interior<0>(x0, yr + a, sr + a, arg.data(), n, g);
        }
        for (int64_t ow = b; ow < g.OW; ++ow) pool_window(xp, yr + ow, sr + ow, oh, ow, g);
      }
    }
  }
}

}  // namespace cnnviz
