// Shapes and pooling geometry shared by the CPU and CUDA twins of every op.
#pragma once
#include <cstdint>

namespace cnnviz {

// One 2-D pooling layer applied to an [N, C, H, W] map. OH/OW are resolved by the caller
// (engine/geometry) from all four pads and ceil_mode; the kernels only need the leading pads,
// because trailing padding changes nothing but the output size.
struct PoolGeometry {
  int64_t N, C;             // batch, channels
  int64_t H, W;             // input map
  int64_t OH, OW;           // output map
  int kh, kw;               // kernel
  int sh, sw;               // stride
  int pad_top, pad_left;    // leading padding
  int dh, dw;               // dilation
};

// Running top-k state and one batch of per-(image, unit) candidates.
struct TopKShape {
  int64_t units;            // U
  int64_t k;                // slots per unit
  int64_t batch;            // B candidates per unit in this merge
};

}  // namespace cnnviz
