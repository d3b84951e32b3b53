#include "tensor.h"

#include <dlpack/dlpack.h>

#include <cstring>
#include <sstream>

#include "device.h"

namespace cnnviz {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::u8: return "uint8";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
  }
  return "?";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::u8: return 1;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}

namespace {

py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::f32: return py::dtype::of<float>();
    case DType::u8: return py::dtype::of<uint8_t>();
    case DType::i32: return py::dtype::of<int32_t>();
    case DType::i64: return py::dtype::of<int64_t>();
  }
  return py::dtype::of<float>();
}

DLDataType dl_dtype(DType t) {
  DLDataType d;
  d.lanes = 1;
  d.bits = static_cast<uint8_t>(8 * dtype_size(t));
  d.code = t == DType::f32 ? kDLFloat : t == DType::u8 ? kDLUInt : kDLInt;
  return d;
}

std::string dl_dtype_name(DLDataType d) {
  std::ostringstream os;
  os << (d.code == kDLFloat ? "float" : d.code == kDLUInt ? "uint" : d.code == kDLInt ? "int" : d.code == kDLBool ? "bool" : "dtype")
     << int(d.bits);
  if (d.lanes != 1) os << "x" << d.lanes;
  return os.str();
}

std::string where(const char* op, const char* arg) { return std::string(op) + ": argument '" + arg + "'"; }

[[noreturn]] void wrong_dtype(const char* op, const char* arg, DType want, const std::string& got) {
  throw py::type_error(where(op, arg) + " must be " + dtype_name(want) + ", got " + got);
}

std::string device_name(DeviceKind k, int id) {
  return k == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(id);
}

void check_device(DeviceKind k, int id, const ExecContext& ctx, const char* op, const char* arg) {
  if (k != ctx.device || (k == DeviceKind::cuda && id != ctx.device_id)) {
    throw py::value_error(where(op, arg) + " is on " + device_name(k, id) + " but the op runs on " +
                          device_name(ctx.device, ctx.device_id) + ": all arrays of one call must be on one device");
  }
}

Tensor from_numpy(py::array arr, DType want, const char* op, const char* arg, bool inplace) {
  py::dtype dt = arr.dtype();
  if (!dt.is(numpy_dtype(want)) && !dt.equal(numpy_dtype(want))) {
    wrong_dtype(op, arg, want, py::str(dt).cast<std::string>());
  }
  if (inplace) {
    if (!(arr.flags() & py::array::c_style)) throw py::value_error(where(op, arg) + " is updated in place and must be C-contiguous");
    if (!arr.writeable()) throw py::value_error(where(op, arg) + " is updated in place and must be writable");
  } else if (!(arr.flags() & py::array::c_style)) {
    arr = py::module_::import("numpy").attr("ascontiguousarray")(arr);
  }
  Tensor t;
  t.dtype = want;
  t.device = DeviceKind::cpu;
  t.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  t.data = inplace ? arr.mutable_data() : const_cast<void*>(arr.data());
  t.keep = arr;
  return t;
}

std::pair<int, int> dlpack_device(py::handle obj) {
  py::tuple dev = obj.attr("__dlpack_device__")();
  return {dev[0].cast<int>(), dev[1].cast<int>()};
}

intptr_t stream_handle(void* stream) {
  // DLPack reserves 0 for "ambiguous"; the legacy default stream is spelled 1.
  auto h = reinterpret_cast<intptr_t>(stream);
  return h == 0 ? 1 : h;
}

Tensor from_dlpack_cuda(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx, bool inplace) {
  py::object cap;
  intptr_t sh = stream_handle(ctx.stream);
  try {
    cap = obj.attr("__dlpack__")(py::arg("stream") = sh, py::arg("max_version") = py::make_tuple(DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    cap = obj.attr("__dlpack__")(py::arg("stream") = sh);  // a producer older than DLPack 1.0
  }
  PyObject* c = cap.ptr();
  const char* name = PyCapsule_GetName(c);
  DLTensor* dl = nullptr;
  Tensor t;
  bool read_only = false;
  if (name && std::strcmp(name, "dltensor_versioned") == 0) {
    auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, name));
    dl = &mt->dl_tensor;
    read_only = mt->flags & DLPACK_FLAG_BITMASK_READ_ONLY;
    t.managed = std::shared_ptr<void>(mt, [](void* p) {
      auto* m = static_cast<DLManagedTensorVersioned*>(p);
      if (m->deleter) m->deleter(m);
    });
    PyCapsule_SetName(c, "used_dltensor_versioned");
  } else if (name && std::strcmp(name, "dltensor") == 0) {
    auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, name));
    dl = &mt->dl_tensor;
    t.managed = std::shared_ptr<void>(mt, [](void* p) {
      auto* m = static_cast<DLManagedTensor*>(p);
      if (m->deleter) m->deleter(m);
    });
    PyCapsule_SetName(c, "used_dltensor");
  } else {
    throw py::type_error(where(op, arg) + ": __dlpack__ returned something that is not a DLPack capsule");
  }
  DLDataType want_dl = dl_dtype(want);
  if (dl->dtype.code != want_dl.code || dl->dtype.bits != want_dl.bits || dl->dtype.lanes != 1) {
    wrong_dtype(op, arg, want, dl_dtype_name(dl->dtype));
  }
  if (inplace && read_only) throw py::value_error(where(op, arg) + " is updated in place but its producer exported it read-only");
  t.dtype = want;
  t.device = DeviceKind::cuda;
  t.device_id = dl->device.device_id;
  t.shape.assign(dl->shape, dl->shape + dl->ndim);
  if (dl->strides) {
    int64_t expect = 1;
    for (int i = dl->ndim - 1; i >= 0; --i) {
      if (dl->shape[i] != 1 && dl->strides[i] != expect) {
        throw py::value_error(where(op, arg) + " is a strided GPU array; pass a contiguous one (e.g. x.contiguous() or cupy.ascontiguousarray(x))");
      }
      expect *= dl->shape[i];
    }
  }
  t.data = static_cast<char*>(dl->data) + dl->byte_offset;
  t.keep = py::reinterpret_borrow<py::object>(obj);
  return t;
}

Tensor import_any(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx, bool inplace) {
  if (py::isinstance<DeviceArray>(obj)) {
    const auto& da = obj.cast<const DeviceArray&>();
    check_device(DeviceKind::cuda, da.device_id(), ctx, op, arg);
    if (da.dtype() != want) wrong_dtype(op, arg, want, dtype_name(da.dtype()));
    if (da.stream() != ctx.stream) {
      device::stream_wait(ctx.stream, da.stream());
      da.buffer()->used_on.push_back(ctx.stream);
    }
    Tensor t;
    t.dtype = want;
    t.device = DeviceKind::cuda;
    t.device_id = da.device_id();
    t.shape = da.shape();
    t.data = da.data();
    t.keep = py::reinterpret_borrow<py::object>(obj);
    return t;
  }
  if (py::isinstance<py::array>(obj)) {
    check_device(DeviceKind::cpu, 0, ctx, op, arg);
    return from_numpy(py::reinterpret_borrow<py::array>(obj), want, op, arg, inplace);
  }
  if (!py::hasattr(obj, "__dlpack_device__")) {
    throw py::type_error(where(op, arg) + " must be a NumPy array or a DLPack tensor (torch, CuPy, ...), got " +
                         py::str(py::type::of(obj)).cast<std::string>());
  }
  auto [dev_type, dev_id] = dlpack_device(obj);
  if (dev_type == kDLCPU) {
    check_device(DeviceKind::cpu, 0, ctx, op, arg);
    if (inplace) throw py::type_error(where(op, arg) + " is updated in place: pass a NumPy array on the host");
    py::array arr = py::module_::import("numpy").attr("from_dlpack")(obj);
    return from_numpy(arr, want, op, arg, false);
  }
  if (dev_type == kDLCUDA || dev_type == kDLCUDAManaged) {
    check_device(DeviceKind::cuda, dev_id, ctx, op, arg);
    return from_dlpack_cuda(obj, want, op, arg, ctx, inplace);
  }
  throw py::value_error(where(op, arg) + " is on DLPack device type " + std::to_string(dev_type) +
                        "; supported: CPU (1) and CUDA (2)");
}

}  // namespace

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string Tensor::device_str() const { return device_name(device, device_id); }
std::string Tensor::shape_str() const { return cnnviz::shape_str(shape); }

Tensor import_tensor(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx) {
  return import_any(obj, want, op, arg, ctx, false);
}

Tensor import_inplace(py::handle obj, DType want, const char* op, const char* arg, const ExecContext& ctx) {
  return import_any(obj, want, op, arg, ctx, true);
}

void check_rank(const Tensor& t, std::size_t rank, const char* layout, const char* op, const char* arg) {
  if (t.shape.size() != rank) {
    throw py::value_error(where(op, arg) + " must have " + std::to_string(rank) + " dimensions " + layout + ", got shape " + t.shape_str());
  }
}

void check_shape(const Tensor& t, const std::vector<int64_t>& want, const char* op, const char* arg) {
  if (t.shape != want) {
    throw py::value_error(where(op, arg) + " must have shape " + shape_str(want) + ", got " + t.shape_str());
  }
}

ExecContext choose_context(std::initializer_list<py::handle> objs, py::object stream) {
  ExecContext ctx;
  for (py::handle obj : objs) {
    if (py::isinstance<DeviceArray>(obj)) {
      ctx.device = DeviceKind::cuda;
      ctx.device_id = obj.cast<const DeviceArray&>().device_id();
      break;
    }
    if (!py::isinstance<py::array>(obj) && py::hasattr(obj, "__dlpack_device__")) {
      auto [type, id] = dlpack_device(obj);
      if (type == kDLCUDA || type == kDLCUDAManaged) {
        ctx.device = DeviceKind::cuda;
        ctx.device_id = id;
        break;
      }
    }
  }
  if (ctx.device == DeviceKind::cuda) {
    if (!device::compiled_with_cuda()) {
      throw py::value_error("inputs are on cuda:" + std::to_string(ctx.device_id) +
                            " but cnnviz_fast was built without CUDA: reinstall with nvcc on PATH and CNNVIZ_CUDA=ON");
    }
    device::set_device(ctx.device_id);
    ctx.stream = stream.is_none() ? device::engine_stream(ctx.device_id) : device::stream_from_handle(stream.cast<intptr_t>());
  } else if (!stream.is_none()) {
    throw py::value_error("argument 'stream' is only meaningful for CUDA inputs; these inputs are on the host");
  }
  return ctx;
}

py::object new_output(DType dtype, const std::vector<int64_t>& shape, const ExecContext& ctx, void** data) {
  if (ctx.device == DeviceKind::cpu) {
    py::array arr(numpy_dtype(dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
    *data = arr.mutable_data();
    return arr;
  }
  int64_t n = 1;
  for (auto d : shape) n *= d;
  auto buf = std::make_shared<DeviceBuffer>(static_cast<std::size_t>(n) * dtype_size(dtype), ctx.device_id, ctx.stream);
  *data = buf->ptr;
  return py::cast(DeviceArray(buf, dtype, shape));
}

DeviceBuffer::DeviceBuffer(std::size_t bytes_, int device_id_, void* stream_)
    : bytes(bytes_), device_id(device_id_), stream(stream_) {
  device::set_device(device_id);
  ptr = device::malloc_async(bytes, stream);
}

DeviceBuffer::~DeviceBuffer() {
  try {
    for (void* s : used_on) device::stream_wait(stream, s);
    device::free_async(ptr, stream);
  } catch (...) {
    // Freeing at exit after the driver shut down fails; nothing useful can be done then.
  }
}

DeviceArray::DeviceArray(std::shared_ptr<DeviceBuffer> buf, DType dtype, std::vector<int64_t> shape)
    : buf_(std::move(buf)), dtype_(dtype), shape_(std::move(shape)) {}

py::array DeviceArray::to_numpy() const {
  py::array arr(numpy_dtype(dtype_), std::vector<py::ssize_t>(shape_.begin(), shape_.end()));
  device::set_device(buf_->device_id);
  device::copy_to_host(arr.mutable_data(), buf_->ptr, arr.nbytes(), buf_->stream);
  return arr;
}

namespace {

// What a DeviceArray's exported capsule owns: the buffer (shared with the DeviceArray) and shape.
template <typename Managed>
struct Export {
  std::shared_ptr<DeviceBuffer> buf;
  std::vector<int64_t> shape;
  Managed mt{};
};

template <typename Managed>
void export_deleter(Managed* self) {
  delete static_cast<Export<Managed>*>(self->manager_ctx);
}

template <typename Managed>
void capsule_destructor(PyObject* cap, const char* name) {
  // A capsule still carrying its original name was never consumed: release it here.
  if (PyCapsule_IsValid(cap, name)) {
    auto* mt = static_cast<Managed*>(PyCapsule_GetPointer(cap, name));
    if (mt && mt->deleter) mt->deleter(mt);
  }
}

template <typename Managed>
py::capsule make_capsule(const std::shared_ptr<DeviceBuffer>& buf, const std::vector<int64_t>& shape, DType dtype,
                         const char* name, PyCapsule_Destructor destructor) {
  auto* ex = new Export<Managed>{buf, shape};
  DLTensor& t = ex->mt.dl_tensor;
  t.data = buf->ptr;
  t.device = DLDevice{kDLCUDA, buf->device_id};
  t.ndim = static_cast<int32_t>(ex->shape.size());
  t.dtype = dl_dtype(dtype);
  t.shape = ex->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  ex->mt.manager_ctx = ex;
  ex->mt.deleter = export_deleter<Managed>;
  PyObject* cap = PyCapsule_New(&ex->mt, name, destructor);
  if (!cap) {
    delete ex;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

}  // namespace

py::capsule DeviceArray::dlpack(py::object stream, py::object max_version) const {
  // Consumer stream per the array API: None means the legacy default stream, -1 no ordering.
  intptr_t h = stream.is_none() ? 1 : stream.cast<intptr_t>();
  if (h != -1) {
    void* consumer = device::stream_from_handle(h);
    device::set_device(buf_->device_id);
    device::stream_wait(consumer, buf_->stream);
    if (consumer != buf_->stream) buf_->used_on.push_back(consumer);
  }
  bool versioned = !max_version.is_none() && py::len(max_version) >= 1 && max_version[py::int_(0)].cast<int>() >= 1;
  if (versioned) {
    auto cap = make_capsule<DLManagedTensorVersioned>(buf_, shape_, dtype_, "dltensor_versioned", [](PyObject* c) {
      capsule_destructor<DLManagedTensorVersioned>(c, "dltensor_versioned");
    });
    auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), "dltensor_versioned"));
    mt->version = DLPackVersion{DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION};
    mt->flags = 0;
    return cap;
  }
  return make_capsule<DLManagedTensor>(buf_, shape_, dtype_, "dltensor", [](PyObject* c) {
    capsule_destructor<DLManagedTensor>(c, "dltensor");
  });
}

}  // namespace cnnviz
