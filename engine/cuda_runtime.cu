// device.h on the CUDA runtime (linked statically, so only the driver is needed at run time).
#include <mutex>
#include <vector>

#include "common/cuda_check.cuh"
#include "device.h"

namespace cnnviz::device {

bool compiled_with_cuda() { return true; }

int device_count() {
  int n = 0;
  // No driver or no GPU is an answer here, not an error: report zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

void set_device(int device_id) { cuda_check(cudaSetDevice(device_id), "cudaSetDevice"); }

void* engine_stream(int device_id) {
  static std::mutex mu;
  static std::vector<cudaStream_t> streams;
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(streams.size()) <= device_id) streams.resize(device_id + 1, nullptr);
  if (!streams[device_id]) {
    set_device(device_id);
    cuda_check(cudaStreamCreateWithFlags(&streams[device_id], cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return streams[device_id];
}

void* stream_from_handle(intptr_t handle) {
  if (handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<void*>(handle);
}

void* malloc_async(std::size_t bytes, void* stream) {
  void* ptr = nullptr;
  if (bytes == 0) return nullptr;
  cuda_check(cudaMallocAsync(&ptr, bytes, static_cast<cudaStream_t>(stream)), "cudaMallocAsync");
  return ptr;
}

void free_async(void* ptr, void* stream) {
  if (ptr) cuda_check(cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)), "cudaFreeAsync");
}

void memset_async(void* ptr, int value, std::size_t bytes, void* stream) {
  if (bytes) cuda_check(cudaMemsetAsync(ptr, value, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (!bytes) return;
  auto s = static_cast<cudaStream_t>(stream);
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync(D2H)");
  cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (!bytes) return;
  auto s = static_cast<cudaStream_t>(stream);
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync(H2D)");
  // The host buffer may be freed by the caller as soon as we return.
  cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

void copy_device(void* dst, const void* src, std::size_t bytes, void* stream) {
  if (bytes) cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)), "cudaMemcpyAsync(D2D)");
}

void stream_wait(void* waiter, void* producer) {
  if (waiter == producer) return;
  cudaEvent_t ev;
  cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  cuda_check(cudaEventRecord(ev, static_cast<cudaStream_t>(producer)), "cudaEventRecord");
  cuda_check(cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), ev, 0), "cudaStreamWaitEvent");
  cuda_check(cudaEventDestroy(ev), "cudaEventDestroy");
}

void stream_synchronize(void* stream) {
  cuda_check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

void* stream_create(int device_id) {
  set_device(device_id);
  cudaStream_t s = nullptr;
  // Non-blocking: it does not wait for (or hold up) work on the legacy default stream.
  cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return s;
}

void stream_destroy(void* stream) {
  cuda_check(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
}

void* host_alloc(std::size_t bytes) {
  void* ptr = nullptr;
  // Portable: pinned for every CUDA context, so ONNX Runtime's CUDA EP (its own libcudart) copies
  // from it without staging.
  cuda_check(cudaHostAlloc(&ptr, bytes, cudaHostAllocPortable), "cudaHostAlloc");
  return ptr;
}

void host_free(void* ptr) noexcept {
  if (ptr && cudaFreeHost(ptr) != cudaSuccess) cudaGetLastError();
}

}  // namespace cnnviz::device
