// unit_max: per (image, unit) the maximum of a feature map and where it is.
//
// Rules (both twins):
// - position = y*W + x of the first maximum in row-major order (ties go to the lower position).
// - NaN is ignored; a map with no number (all NaN, or H*W == 0) gives -inf and position -1.
// - A map whose numbers are all -inf gives -inf at the first non-NaN position.
#pragma once
#include <cstdint>

namespace cnnviz {

void unit_max_cpu(
    // inputs
    const float* a,          // [rows, hw]   rows = N*C, hw = H*W
    // outputs
    float* values,           // [rows]
    int32_t* positions,      // [rows]
    int64_t rows, int64_t hw);

void unit_max_cuda(
    // inputs
    const float* a,          // [rows, hw]  device
    // outputs
    float* values,           // [rows]      device
    int32_t* positions,      // [rows]      device
    int64_t rows, int64_t hw,
    void* stream);           // cudaStream_t

}  // namespace cnnviz
