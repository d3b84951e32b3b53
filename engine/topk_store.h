// The running top-k store: per unit the k best (value, image id, position), kept on the host or,
// for a GPU run, resident on the device and copied to the host only when asked (checkpoints).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace cnnviz {

class TopKStore {
 public:
  TopKStore(int64_t units, int64_t k, const std::string& device);
  // Folds a batch in: values [B, units] float32, positions [B, units] int32, image_ids [B] int64,
  // on the store's device (host arrays are uploaded to a GPU store).
  void merge(py::object values, py::object positions, py::object image_ids, py::object stream);
  py::array values() const;
  py::array image_ids() const;
  py::array positions() const;
  // Restores a state saved from values()/image_ids()/positions() (resume after a checkpoint).
  void load(py::object values, py::object image_ids, py::object positions);
  void reset();

  int64_t units() const { return units_; }
  int64_t k() const { return k_; }
  std::string device() const;

 private:
  py::array host_copy(int which) const;
  Tensor state(int which) const;

  int64_t units_, k_;
  DeviceKind kind_ = DeviceKind::cpu;
  int device_id_ = 0;
  void* stream_ = nullptr;
  mutable py::array host_[3];                     // cpu: values, ids, positions
  std::shared_ptr<DeviceBuffer> dev_[3];          // cuda: the same three
};

}  // namespace cnnviz
