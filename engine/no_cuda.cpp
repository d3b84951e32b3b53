// device.h for builds without CUDA: nothing is usable, and each call says how to get a CUDA build.
#include "device.h"

#include <stdexcept>

namespace cnnviz::device {
namespace {
[[noreturn]] void unavailable() {
  throw std::runtime_error(
      "cnnviz_fast was built without CUDA: reinstall with a CUDA toolkit on PATH and "
      "CNNVIZ_CUDA=ON (pip install --force-reinstall --no-cache-dir cnnviz_fast)");
}
}  // namespace

bool compiled_with_cuda() { return false; }
int device_count() { return 0; }
std::string runtime_version() { return ""; }
void set_device(int) { unavailable(); }
void* engine_stream(int) { unavailable(); }
void* stream_from_handle(intptr_t) { unavailable(); }
void* malloc_async(std::size_t, void*) { unavailable(); }
void free_async(void*, void*) { unavailable(); }
void memset_async(void*, int, std::size_t, void*) { unavailable(); }
void copy_to_host(void*, const void*, std::size_t, void*) { unavailable(); }
void copy_to_device(void*, const void*, std::size_t, void*) { unavailable(); }
void copy_device(void*, const void*, std::size_t, void*) { unavailable(); }
void stream_wait(void*, void*) { unavailable(); }
void stream_synchronize(void*) { unavailable(); }
void* stream_create(int) { unavailable(); }
void stream_destroy(void*) { unavailable(); }
void* host_alloc(std::size_t) { unavailable(); }
void host_free(void*) noexcept {}

}  // namespace cnnviz::device
