// The four kernels as Python sees them: argument checking, output allocation and the choice of
// device. Every message names the op, the argument and what was expected.
#pragma once
#include "tensor.h"

namespace cnnviz {

py::tuple switch_pool(py::object x, py::object kernel, py::object stride, py::object padding, py::object dilation,
                      bool ceil_mode, py::object stream);
py::object unpool(py::object y, py::object switches, py::object kernel, py::object stride, py::object padding,
                  py::object dilation, py::object output_size, py::object stream);
py::tuple unit_max(py::object a, py::object stream);
void topk_merge(py::object state_values, py::object state_ids, py::object state_positions, py::object values,
                py::object positions, py::object image_ids, py::object stream);

// CPU kernel threads. OpenMP's own setting is per calling thread; this one holds for every thread
// that calls into the engine (pipelines call kernels from worker threads).
void set_cpu_threads(int n);
int get_cpu_threads();

// Shared with TopKStore: checks the shapes of one merge and runs it on ctx's device.
void run_topk_merge(const Tensor& sv, const Tensor& si, const Tensor& sp, const Tensor& v, const Tensor& p,
                    const Tensor& ids, const ExecContext& ctx, const char* op);

}  // namespace cnnviz
