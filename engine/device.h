// The engine's view of CUDA: plain C++ declarations, no CUDA headers. Implemented by
// cuda_runtime.cu when the extension is built with CUDA, and by no_cuda.cpp (which raises a clear
// error for every call but device_count) otherwise. Streams are passed as void* (cudaStream_t).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cnnviz::device {

bool compiled_with_cuda();
int device_count();                           // 0 where no driver or GPU is usable
std::string runtime_version();                // e.g. "13.0", or "" without CUDA
void set_device(int device_id);

// The engine's own non-blocking stream for a device (created on first use, lives for the process).
void* engine_stream(int device_id);
// Decodes a DLPack/CUDA-array-interface stream number: 1 = legacy default, 2 = per-thread default.
void* stream_from_handle(intptr_t handle);

void* malloc_async(std::size_t bytes, void* stream);
void free_async(void* ptr, void* stream);
void memset_async(void* ptr, int value, std::size_t bytes, void* stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream);    // waits for it
void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream);  // waits for it
void copy_device(void* dst, const void* src, std::size_t bytes, void* stream);
// Makes `waiter` wait for the work queued so far on `producer` (an event, no host block).
void stream_wait(void* waiter, void* producer);
void stream_synchronize(void* stream);

// For Python (cnnviz_fast.runtime): a stream the caller owns, handed to ONNX Runtime's CUDA EP as
// its user_compute_stream, and page-locked host memory for the batches copied to the device.
void* stream_create(int device_id);           // non-blocking; destroy it with stream_destroy
void stream_destroy(void* stream);
void* host_alloc(std::size_t bytes);          // page-locked, portable; free it with host_free
void host_free(void* ptr) noexcept;           // errors ignored: called from a destructor

}  // namespace cnnviz::device
