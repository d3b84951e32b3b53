// topk_merge: fold one batch of per-(image, unit) scores into a running top-k per unit.
//
// Rules (both twins):
// - Order: higher value first; equal values go to the lower image id. This is a total order on
//   (value, image_id), so merging batches in any order gives the state brute force gives.
// - A candidate enters only if its value is a number > -inf: NaN and -inf (unit_max's marker for
//   a map with no number) never enter.
// - Empty slots hold value -inf, image id -1, position -1 and sort after every real entry.
// - The caller merges each image at most once per unit (ids are unique across merges).
// - Each state row stays sorted best first; rows are independent (parallel over units).
#pragma once
#include <cstdint>
#include "common/geometry.h"

namespace cnnviz {

void topk_merge_cpu(
    // state, updated in place
    float* state_values,            // [U, k]
    int64_t* state_ids,             // [U, k]
    int32_t* state_positions,       // [U, k]
    // inputs
    const float* values,            // [B, U]
    const int32_t* positions,       // [B, U]
    const int64_t* image_ids,       // [B]
    const TopKShape& s);

void topk_merge_cuda(
    // state, updated in place
    float* state_values,            // [U, k] device
    int64_t* state_ids,             // [U, k] device
    int32_t* state_positions,       // [U, k] device
    // inputs
    const float* values,            // [B, U] device
    const int32_t* positions,       // [B, U] device
    const int64_t* image_ids,       // [B]    device
    const TopKShape& s,
    void* stream);                  // cudaStream_t

}  // namespace cnnviz
