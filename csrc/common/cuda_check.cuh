// Error checking for CUDA launches, included by .cu files only.
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

namespace cnnviz {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

}  // namespace cnnviz

// Checks the launch just made (configuration errors surface here, not at the next sync).
#define CNNVIZ_CHECK_LAUNCH(name) ::cnnviz::cuda_check(cudaGetLastError(), name)
