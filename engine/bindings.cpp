// cnnviz_fast._C: the module definition and build_info(); the logic lives in dispatch.cpp,
// tensor.cpp and topk_store.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <dlpack/dlpack.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "device.h"
#include "dispatch.h"
#include "tensor.h"
#include "topk_store.h"

namespace py = pybind11;
using namespace cnnviz;

namespace {

[[maybe_unused]] py::list split_archs(const std::string& s) {
  py::list out;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.append(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  d["version"] = CNNVIZ_VERSION;
  d["cuda"] = device::compiled_with_cuda();
#ifdef CNNVIZ_WITH_CUDA
  d["cuda_archs"] = split_archs(CNNVIZ_CUDA_ARCHS);
  d["cuda_compiler_version"] = CNNVIZ_CUDA_COMPILER_VERSION;
  d["cuda_runtime_version"] = device::runtime_version();
#else
  d["cuda_archs"] = py::list();
  d["cuda_compiler_version"] = py::none();
  d["cuda_runtime_version"] = py::none();
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_threads"] = 1;
#endif
  d["dlpack_version"] = std::to_string(DLPACK_MAJOR_VERSION) + "." + std::to_string(DLPACK_MINOR_VERSION);
  return d;
}

// A NumPy uint8 array of `bytes` page-locked bytes; the array owns them (freed with its last view).
py::array pinned_empty(std::size_t bytes) {
  if (bytes == 0) throw py::value_error("pinned_empty: nbytes must be > 0");
  void* ptr = nullptr;
  {
    py::gil_scoped_release nogil;
    ptr = device::host_alloc(bytes);
  }
  py::capsule owner(ptr, [](void* p) { device::host_free(p); });
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(bytes)}, {static_cast<py::ssize_t>(1)}, static_cast<uint8_t*>(ptr), owner);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cnnviz_fast native kernels: switch_pool, unpool, unit_max, topk_merge (CPU and CUDA)";

  m.def("build_info", &build_info, "What was compiled: CUDA and its architectures, OpenMP, versions.");
  m.def("set_num_threads", &set_cpu_threads, py::arg("n"),
        "Threads for the CPU kernels, from any calling thread (default: OMP_NUM_THREADS or the core count).");
  m.def("get_num_threads", &get_cpu_threads);
  m.def("cuda_device_count", &device::device_count, "CUDA devices usable by this build (0 without CUDA or a GPU).");

  // Streams and page-locked memory for cnnviz_fast.runtime; a build without CUDA raises RuntimeError.
  m.def("cuda_stream_create", [](int device_id) { return reinterpret_cast<intptr_t>(device::stream_create(device_id)); },
        py::arg("device_id") = 0, "A new non-blocking CUDA stream on the device, as an integer handle (cudaStream_t).");
  m.def("cuda_stream_destroy", [](intptr_t h) { device::stream_destroy(reinterpret_cast<void*>(h)); }, py::arg("handle"),
        "Destroys a stream made by cuda_stream_create (work queued on it still completes).");
  m.def("cuda_stream_synchronize", [](intptr_t h) {
        py::gil_scoped_release nogil;
        device::stream_synchronize(device::stream_from_handle(h));
      }, py::arg("handle"), "Waits for the work queued on a stream (1 = legacy default, 2 = per-thread default).");
  m.def("cuda_pinned_empty", &pinned_empty, py::arg("nbytes"),
        "A NumPy uint8 array of nbytes page-locked host bytes (cudaHostAlloc, portable); view it as any dtype.");

  m.def("switch_pool", &switch_pool, py::arg("x"), py::arg("kernel"), py::arg("stride") = py::none(),
        py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("ceil_mode") = false, py::arg("stream") = py::none(),
        "Max pooling that records switches: returns (y float32 [N,C,OH,OW], switches uint8 [N,C,OH,OW]).\n"
        "padding: int, (ph, pw) or (top, left, bottom, right). Rules in csrc/ops/switch_pool.h.");
  m.def("unpool", &unpool, py::arg("y"), py::arg("switches"), py::arg("kernel"), py::arg("stride") = py::none(),
        py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("output_size") = py::none(), py::arg("stream") = py::none(),
        "The exact adjoint of switch_pool: returns x float32 [N,C,H,W] with (H, W) = output_size.");
  m.def("unit_max", &unit_max, py::arg("a"), py::arg("stream") = py::none(),
        "Per (image, unit) max over H*W and its first position: (values float32 [N,C], positions int32 [N,C]).");
  m.def("topk_merge", &topk_merge, py::arg("state_values"), py::arg("state_ids"), py::arg("state_positions"),
        py::arg("values"), py::arg("positions"), py::arg("image_ids"), py::arg("stream") = py::none(),
        "Folds a batch (values [B,U], positions [B,U], image_ids [B]) into a running top-k state [U,k], in place.");

  py::class_<DeviceArray>(m, "DeviceArray", "A GPU array made by cnnviz_fast; exchange it through DLPack.")
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape())); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return std::string(dtype_name(a.dtype())); })
      .def_property_readonly("device", [](const DeviceArray& a) { return "cuda:" + std::to_string(a.device_id()); })
      .def("numpy", &DeviceArray::to_numpy, "A host copy as a NumPy array.")
      .def("__dlpack__",
           [](const DeviceArray& a, py::object stream, py::object max_version, py::object, py::object) {
             return a.dlpack(stream, max_version);
           },
           py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(static_cast<int>(kDLCUDA), a.device_id()); })
      .def("__repr__", [](const DeviceArray& a) {
        return "DeviceArray(shape=" + shape_str(a.shape()) + ", dtype=" + dtype_name(a.dtype()) + ", device=cuda:" + std::to_string(a.device_id()) + ")";
      });

  py::class_<TopKStore>(m, "TopKStore", "Running top-k per unit on the host or resident on a GPU.")
      .def(py::init<int64_t, int64_t, const std::string&>(), py::arg("units"), py::arg("k"), py::arg("device") = "cpu")
      .def("merge", &TopKStore::merge, py::arg("values"), py::arg("positions"), py::arg("image_ids"), py::arg("stream") = py::none())
      .def("values", &TopKStore::values)
      .def("image_ids", &TopKStore::image_ids)
      .def("positions", &TopKStore::positions)
      .def("load", &TopKStore::load, py::arg("values"), py::arg("image_ids"), py::arg("positions"))
      .def("reset", &TopKStore::reset)
      .def_property_readonly("units", &TopKStore::units)
      .def_property_readonly("k", &TopKStore::k)
      .def_property_readonly("device", &TopKStore::device);
}
