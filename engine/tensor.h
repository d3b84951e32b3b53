// Arrays crossing the Python boundary: NumPy on the host, any DLPack producer on a GPU.
//
// Inputs are imported as non-owning views (`Tensor`) that keep their producer alive; outputs are
// NumPy arrays on the host and `DeviceArray`s (which export DLPack themselves) on a GPU, so the
// result of every op lives where its inputs live.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cnnviz {

namespace py = pybind11;

enum class DType { f32, u8, i32, i64 };
enum class DeviceKind { cpu, cuda };

const char* dtype_name(DType t);
std::size_t dtype_size(DType t);

// A device allocation owned by shared_ptr; freed on the stream it was made for.
struct DeviceBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  int device_id = 0;
  void* stream = nullptr;
  std::vector<void*> used_on;            // other streams that read it; the free waits for them
  DeviceBuffer(std::size_t bytes, int device_id, void* stream);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  DeviceKind device = DeviceKind::cpu;
  int device_id = 0;
  py::object keep;                       // the NumPy array or DeviceArray viewed
  std::shared_ptr<void> managed;         // a consumed DLPack capsule's tensor, released by its deleter

  int64_t numel() const;
  int64_t dim(int i) const { return shape[static_cast<std::size_t>(i)]; }
  std::string device_str() const;
  std::string shape_str() const;
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

// A GPU array returned by the engine. Python sees it as cnnviz_fast._C.DeviceArray.
class DeviceArray {
 public:
  DeviceArray(std::shared_ptr<DeviceBuffer> buf, DType dtype, std::vector<int64_t> shape);
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  int device_id() const { return buf_->device_id; }
  void* data() const { return buf_->ptr; }
  void* stream() const { return buf_->stream; }
  const std::shared_ptr<DeviceBuffer>& buffer() const { return buf_; }
  py::array to_numpy() const;
  py::capsule dlpack(py::object stream, py::object max_version) const;

 private:
  std::shared_ptr<DeviceBuffer> buf_;
  DType dtype_;
  std::vector<int64_t> shape_;
};

// Where an op runs: the device of its inputs and, on CUDA, its stream.
struct ExecContext {
  DeviceKind device = DeviceKind::cpu;
  int device_id = 0;
  void* stream = nullptr;
};

// Imports `obj` as argument `arg` of `op`. Host inputs become C-contiguous NumPy views (a copy if
// the input was strided; never a dtype conversion). GPU inputs must be compact; the producer is
// asked to order its pending work before `ctx.stream`.
Tensor import_tensor(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx);
// Like import_tensor, for arrays the op writes into: contiguous and writable, never copied.
Tensor import_inplace(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx);

// The device of the first GPU input among `objs` (CPU if none), with the stream to run on:
// `stream` if the caller gave one, else the engine's stream for that device.
ExecContext choose_context(std::initializer_list<py::handle> objs, py::object stream);

// A new output of `shape` on ctx's device: a NumPy array, or a DeviceArray.
py::object new_output(DType dtype, const std::vector<int64_t>& shape, const ExecContext& ctx, void** data);

void check_rank(const Tensor& t, std::size_t rank, const char* layout, const char* op, const char* arg);
void check_shape(const Tensor& t, const std::vector<int64_t>& want, const char* op, const char* arg);
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace cnnviz
