// switch_pool: max pooling that records, for every output, where in its window the max came from.
//
// Rules (both twins):
// - Window of output (oh, ow) reads input rows ih = oh*sh - pad_top + ky*dh and columns
//   iw = ow*sw - pad_left + kx*dw for ky < kh, kx < kw; positions outside [0,H)x[0,W) are padding
//   and never win.
// - The switch is the window index ky*kw + kx (not dilated) of the first maximum in row-major
//   window order (PyTorch's CPU rule); so kh*kw <= 255 (checked by the caller).
// - NaN is a maximum, so y is NaN as in torch.max_pool2d; the switch names the first NaN in
//   window order (torch's CPU kernel names the last one: values agree, indices may not).
// - A window wholly in padding gives y = -inf and switch 255 (kNoSwitch): unpool skips it.
#pragma once
#include <cstdint>
#include "common/geometry.h"

namespace cnnviz {

constexpr uint8_t kNoSwitch = 255;

void switch_pool_cpu(
    // inputs
    const float* x,          // [N, C, H, W]
    // outputs
    float* y,                // [N, C, OH, OW]
    uint8_t* switches,       // [N, C, OH, OW]
    const PoolGeometry& g);

void switch_pool_cuda(
    // inputs
    const float* x,          // [N, C, H, W]   device
    // outputs
    float* y,                // [N, C, OH, OW] device
    uint8_t* switches,       // [N, C, OH, OW] device
    const PoolGeometry& g,
    void* stream);           // cudaStream_t

}  // namespace cnnviz
