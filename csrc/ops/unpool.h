// unpool: the exact adjoint of switch_pool with the same geometry.
//
// x[n, c, ih, iw] = sum of y[n, c, oh, ow] over every window (oh, ow) whose switch points at
// (ih, iw). Written as a gather: each input location visits the windows that can contain it in a
// fixed order (ky ascending, then kx ascending), so overlapping windows add in the same order on
// every run and on both devices — bit-identical results, no atomics. (The CPU twin walks a whole
// input row per (ky, kx) so the inner loop vectorises; each element still receives its terms in
// that order.) Switch 255 contributes
// nothing. Every element of x is written (zero where no window chose it).
#pragma once
#include <cstdint>
#include "common/geometry.h"

namespace cnnviz {

void unpool_cpu(
    // inputs
    const float* y,                 // [N, C, OH, OW]
    const uint8_t* switches,        // [N, C, OH, OW]
    // outputs
    float* x,                       // [N, C, H, W]
    const PoolGeometry& g);

void unpool_cuda(
    // inputs
    const float* y,                 // [N, C, OH, OW] device
    const uint8_t* switches,        // [N, C, OH, OW] device
    // outputs
    float* x,                       // [N, C, H, W]   device
    const PoolGeometry& g,
    void* stream);                  // cudaStream_t

}  // namespace cnnviz
