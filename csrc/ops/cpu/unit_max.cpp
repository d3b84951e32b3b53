#include "ops/unit_max.h"

#include <limits>

namespace cnnviz {
namespace {

// Independent accumulators so the max pass runs in vector registers; `omp simd` states that the
// lanes are independent (without it GCC's cost model keeps the select scalar).
constexpr int64_t kLanes = 16;

// Largest number in the row; NaN never wins because every comparison with it is false, and a row
// with no number keeps the starting -inf.
float row_max(const float* r, int64_t hw) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float acc[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) acc[j] = neg_inf;
  int64_t i = 0;
  for (; i + kLanes <= hw; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = r[i + j] > acc[j] ? r[i + j] : acc[j];
  }
  float m = neg_inf;
  for (; i < hw; ++i) m = r[i] > m ? r[i] : m;
  for (int64_t j = 0; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// First index holding m, or -1 (NaN equals nothing, so an all-NaN row gives -1; a row of -inf and
// NaN finds its first -inf). Blocks are tested whole, then searched.
int64_t first_equal(const float* r, int64_t hw, float m) {
  int64_t i = 0;
  for (; i + kLanes <= hw; i += kLanes) {
    int hit = 0;
#pragma omp simd reduction(|:hit)
    for (int64_t j = 0; j < kLanes; ++j) hit |= r[i + j] == m;
    if (hit) break;
  }
  for (; i < hw; ++i) {
    if (r[i] == m) return i;
  }
  return -1;
}

}  // namespace

void unit_max_cpu(const float* a, float* values, int32_t* positions, int64_t rows, int64_t hw) {
  // Small inputs are not worth waking the thread team.
  const bool parallel = rows > 1 && rows * hw >= (int64_t{1} << 15);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < rows; ++row) {
    const float* r = a + row * hw;
    const int64_t pos = first_equal(r, hw, row_max(r, hw));
    // The value is read back at the position, so +0 and -0 ties report the sign of the winner.
    values[row] = pos < 0 ? -std::numeric_limits<float>::infinity() : r[pos];
    positions[row] = static_cast<int32_t>(pos);
  }
}

}  // namespace cnnviz
