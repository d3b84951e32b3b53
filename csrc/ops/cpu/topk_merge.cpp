#include "ops/topk_merge.h"

#include <algorithm>
#include <limits>

namespace cnnviz {
namespace {

// Units per tile: the tile's thresholds and the slice of each batch row stay in L1.
constexpr int64_t kTile = 256;
constexpr int64_t kLanes = 8;  // candidates tested together before any is looked at alone

// (v, id) ranks before (wv, wid): higher value, then lower image id.
inline bool ranks_before(float v, int64_t id, float wv, int64_t wid) {
  return v > wv || (v == wv && id < wid);
}

// Puts a candidate that beats the row's last slot into its place; the last entry drops out.
inline void insert(float* sv, int64_t* si, int32_t* sp, int64_t k, float v, int64_t id,
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

}  // namespace

void topk_merge_cpu(float* state_values, int64_t* state_ids, int32_t* state_positions,
                    const float* values, const int32_t* positions, const int64_t* image_ids,
                    const TopKShape& s) {
  const int64_t U = s.units, k = s.k, B = s.batch;
  if (U <= 0 || k <= 0 || B <= 0) return;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t tiles = (U + kTile - 1) / kTile;
  // A merge this small is over before a second thread would be scheduled on a busy machine.
  const bool parallel = tiles > 1 && U * B >= (int64_t{1} << 20);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t u0 = tile * kTile;
    const int64_t n = std::min(kTile, U - u0);
    // The value in each row's last slot: most candidates fail this one comparison.
    float worst[kTile];
    for (int64_t t = 0; t < n; ++t) worst[t] = state_values[(u0 + t) * k + k - 1];
    for (int64_t b = 0; b < B; ++b) {
      const float* vb = values + b * U + u0;
      const int64_t id = image_ids[b];
      for (int64_t t0 = 0; t0 < n; t0 += kLanes) {
        const int64_t end = std::min(t0 + kLanes, n);
        // A full group is tested in one vector step and skipped when no candidate passes.
        if (end - t0 == kLanes) {
          int hit = 0;
#pragma omp simd reduction(|:hit)
          for (int64_t j = 0; j < kLanes; ++j) hit |= vb[t0 + j] >= worst[t0 + j];
          if (!hit) continue;
        }
        for (int64_t t = t0; t < end; ++t) {
          const float v = vb[t];
          // >= lets a tie through to the id test; NaN fails every comparison, -inf the second.
          if (!(v >= worst[t]) || !(v > neg_inf)) continue;
          const int64_t row = (u0 + t) * k;
          float* sv = state_values + row;
          int64_t* si = state_ids + row;
          int32_t* sp = state_positions + row;
          if (!ranks_before(v, id, sv[k - 1], si[k - 1])) continue;
          insert(sv, si, sp, k, v, id, positions[b * U + u0 + t]);
          worst[t] = sv[k - 1];
        }
      }
    }
  }
}

}  // namespace cnnviz
