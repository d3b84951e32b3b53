#include "topk_store.h"

#include <cstring>
#include <limits>

#include "device.h"
#include "dispatch.h"

namespace cnnviz {

namespace {
const DType kStateTypes[3] = {DType::f32, DType::i64, DType::i32};
const char* kStateNames[3] = {"values", "image_ids", "positions"};
}  // namespace

TopKStore::TopKStore(int64_t units, int64_t k, const std::string& device) : units_(units), k_(k) {
  if (units < 0) throw py::value_error("TopKStore: argument 'units' must be >= 0, got " + std::to_string(units));
  if (k < 1) throw py::value_error("TopKStore: argument 'k' must be >= 1, got " + std::to_string(k));
  if (device == "cpu") {
    kind_ = DeviceKind::cpu;
    host_[0] = py::array_t<float>({units, k});
    host_[1] = py::array_t<int64_t>({units, k});
    host_[2] = py::array_t<int32_t>({units, k});
  } else if (device.rfind("cuda", 0) == 0) {
    if (!device::compiled_with_cuda()) throw py::value_error("TopKStore: device 'cuda' asked for, but cnnviz_fast was built without CUDA");
    kind_ = DeviceKind::cuda;
    device_id_ = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
    if (device_id_ >= device::device_count()) {
      throw py::value_error("TopKStore: device '" + device + "' is not present (" + std::to_string(device::device_count()) + " CUDA devices visible)");
    }
    device::set_device(device_id_);
    stream_ = device::engine_stream(device_id_);
    for (int i = 0; i < 3; ++i) {
      dev_[i] = std::make_shared<DeviceBuffer>(static_cast<std::size_t>(units * k) * dtype_size(kStateTypes[i]), device_id_, stream_);
    }
  } else {
    throw py::value_error("TopKStore: argument 'device' must be 'cpu', 'cuda' or 'cuda:N', got '" + device + "'");
  }
  reset();
}

std::string TopKStore::device() const { return kind_ == DeviceKind::cpu ? "cpu" : "cuda:" + std::to_string(device_id_); }

void TopKStore::reset() {
  std::size_t n = static_cast<std::size_t>(units_ * k_);
  std::vector<float> v(n, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> ids(n, -1);
  std::vector<int32_t> pos(n, -1);
  const void* src[3] = {v.data(), ids.data(), pos.data()};
  for (int i = 0; i < 3; ++i) {
    std::size_t bytes = n * dtype_size(kStateTypes[i]);
    if (kind_ == DeviceKind::cpu) {
      std::memcpy(host_[i].mutable_data(), src[i], bytes);
    } else {
      device::copy_to_device(dev_[i]->ptr, src[i], bytes, stream_);
    }
  }
}

Tensor TopKStore::state(int which) const {
  Tensor t;
  t.dtype = kStateTypes[which];
  t.shape = {units_, k_};
  t.device = kind_;
  t.device_id = device_id_;
  t.data = kind_ == DeviceKind::cpu ? host_[which].mutable_data() : dev_[which]->ptr;
  return t;
}

void TopKStore::merge(py::object values, py::object positions, py::object image_ids, py::object stream) {
  const char* op = "TopKStore.merge";
  ExecContext ctx;
  ctx.device = kind_;
  ctx.device_id = device_id_;
  ctx.stream = stream_;
  if (kind_ == DeviceKind::cuda && !stream.is_none()) ctx.stream = device::stream_from_handle(stream.cast<intptr_t>());
  py::object objs[3] = {values, positions, image_ids};
  const DType types[3] = {DType::f32, DType::i32, DType::i64};
  const char* names[3] = {"values", "positions", "image_ids"};
  Tensor in[3];
  std::shared_ptr<DeviceBuffer> uploads[3];
  for (int i = 0; i < 3; ++i) {
    bool host = py::isinstance<py::array>(objs[i]);
    if (kind_ == DeviceKind::cuda && host) {
      ExecContext host_ctx;
      Tensor h = import_tensor(objs[i], types[i], op, names[i], host_ctx);
      uploads[i] = std::make_shared<DeviceBuffer>(static_cast<std::size_t>(h.numel()) * dtype_size(types[i]), device_id_, ctx.stream);
      device::copy_to_device(uploads[i]->ptr, h.data, static_cast<std::size_t>(h.numel()) * dtype_size(types[i]), ctx.stream);
      in[i] = h;
      in[i].device = DeviceKind::cuda;
      in[i].device_id = device_id_;
      in[i].data = uploads[i]->ptr;
    } else {
      in[i] = import_tensor(objs[i], types[i], op, names[i], ctx);
    }
  }
  run_topk_merge(state(0), state(1), state(2), in[0], in[1], in[2], ctx, op);
  if (ctx.stream != stream_) device::stream_wait(stream_, ctx.stream);
}

py::array TopKStore::host_copy(int which) const {
  if (kind_ == DeviceKind::cpu) return host_[which].attr("copy")();
  py::array out;
  switch (kStateTypes[which]) {
    case DType::f32: out = py::array_t<float>({units_, k_}); break;
    case DType::i64: out = py::array_t<int64_t>({units_, k_}); break;
    default: out = py::array_t<int32_t>({units_, k_}); break;
  }
  device::set_device(device_id_);
  device::copy_to_host(out.mutable_data(), dev_[which]->ptr, static_cast<std::size_t>(out.nbytes()), stream_);
  return out;
}

py::array TopKStore::values() const { return host_copy(0); }
py::array TopKStore::image_ids() const { return host_copy(1); }
py::array TopKStore::positions() const { return host_copy(2); }

void TopKStore::load(py::object values, py::object image_ids, py::object positions) {
  py::object objs[3] = {values, image_ids, positions};
  ExecContext host_ctx;
  for (int i = 0; i < 3; ++i) {
    Tensor t = import_tensor(objs[i], kStateTypes[i], "TopKStore.load", kStateNames[i], host_ctx);
    check_shape(t, {units_, k_}, "TopKStore.load", kStateNames[i]);
    std::size_t bytes = static_cast<std::size_t>(t.numel()) * dtype_size(kStateTypes[i]);
    if (kind_ == DeviceKind::cpu) {
      std::memcpy(host_[i].mutable_data(), t.data, bytes);
    } else {
      device::copy_to_device(dev_[i]->ptr, t.data, bytes, stream_);
    }
  }
}

}  // namespace cnnviz
