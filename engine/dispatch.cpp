#include "dispatch.h"

#include <atomic>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "device.h"
#include "ops/switch_pool.h"
#include "ops/topk_merge.h"
#include "ops/unit_max.h"
#include "ops/unpool.h"

namespace cnnviz {

namespace {

std::atomic<int> g_cpu_threads{0};  // 0: OpenMP's default

// Applies the engine-wide thread count to the calling thread before a CPU kernel runs.
void use_cpu_threads() {
#ifdef _OPENMP
  int n = g_cpu_threads.load();
  if (n > 0) omp_set_num_threads(n);
#endif
}

struct Pair {
  int h, w;
};

std::string arg_name(const char* op, const char* arg) { return std::string(op) + ": argument '" + arg + "'"; }

// Anything with __index__ (Python ints, NumPy integers as read from ONNX attributes), not bools.
bool is_index(py::handle v) {
  return !py::isinstance<py::bool_>(v) && PyIndex_Check(v.ptr());
}

int to_int(py::handle v, const char* op, const char* arg) {
  if (!is_index(v)) {
    throw py::type_error(arg_name(op, arg) + " must hold integers, got " + py::repr(v).cast<std::string>());
  }
  return py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr())).cast<int>();
}

// An int or an (h, w) pair, each at least `min`.
Pair parse_pair(py::handle obj, const char* op, const char* arg, int min) {
  Pair p;
  if (is_index(obj)) {
    p.h = p.w = to_int(obj, op, arg);
  } else if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) && py::len(obj) == 2) {
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    p.h = to_int(seq[0], op, arg);
    p.w = to_int(seq[1], op, arg);
  } else {
    throw py::type_error(arg_name(op, arg) + " must be an int or an (h, w) pair, got " + py::repr(obj).cast<std::string>());
  }
  if (p.h < min || p.w < min) {
    throw py::value_error(arg_name(op, arg) + " must be at least " + std::to_string(min) + ", got (" +
                          std::to_string(p.h) + ", " + std::to_string(p.w) + ")");
  }
  return p;
}

struct Pads {
  int top, left, bottom, right;
};

// An int, (ph, pw) or ONNX-style (top, left, bottom, right).
Pads parse_pads(py::handle obj, const char* op) {
  if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) && py::len(obj) == 4) {
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    Pads p{to_int(seq[0], op, "padding"), to_int(seq[1], op, "padding"), to_int(seq[2], op, "padding"), to_int(seq[3], op, "padding")};
    if (p.top < 0 || p.left < 0 || p.bottom < 0 || p.right < 0) throw py::value_error(arg_name(op, "padding") + " must be non-negative");
    return p;
  }
  Pair p = parse_pair(obj, op, "padding", 0);
  return Pads{p.h, p.w, p.h, p.w};
}

// PyTorch's rule: with ceil_mode the last window must start inside the input or the leading padding.
int64_t pooled_size(int64_t in, int k, int s, int lead, int trail, int d, bool ceil_mode) {
  int64_t span = in + lead + trail - static_cast<int64_t>(d) * (k - 1) - 1;
  if (span < 0) return -1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + lead) --out;
  return out;
}

struct Geometry {
  Pair kernel, stride, dilation;
  Pads pads;
};

Geometry parse_geometry(py::handle kernel, py::handle stride, py::handle padding, py::handle dilation, const char* op) {
  Geometry g;
  g.kernel = parse_pair(kernel, op, "kernel", 1);
  g.stride = stride.is_none() ? g.kernel : parse_pair(stride, op, "stride", 1);
  g.dilation = parse_pair(dilation, op, "dilation", 1);
  g.pads = parse_pads(padding, op);
  if (g.kernel.h * g.kernel.w > 255) {
    throw py::value_error(arg_name(op, "kernel") + ": a window of " + std::to_string(g.kernel.h) + "x" + std::to_string(g.kernel.w) +
                          " has more than 255 positions, which uint8 switches cannot index");
  }
  return g;
}

PoolGeometry make_pool_geometry(const Geometry& g, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  PoolGeometry pg;
  pg.N = N; pg.C = C; pg.H = H; pg.W = W; pg.OH = OH; pg.OW = OW;
  pg.kh = g.kernel.h; pg.kw = g.kernel.w;
  pg.sh = g.stride.h; pg.sw = g.stride.w;
  pg.pad_top = g.pads.top; pg.pad_left = g.pads.left;
  pg.dh = g.dilation.h; pg.dw = g.dilation.w;
  return pg;
}

}  // namespace

void set_cpu_threads(int n) {
  if (n < 1) throw py::value_error("set_num_threads: argument 'n' must be >= 1, got " + std::to_string(n));
  g_cpu_threads.store(n);
}

int get_cpu_threads() {
#ifdef _OPENMP
  int n = g_cpu_threads.load();
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

py::tuple switch_pool(py::object x_obj, py::object kernel, py::object stride, py::object padding, py::object dilation,
                      bool ceil_mode, py::object stream) {
  const char* op = "switch_pool";
  Geometry g = parse_geometry(kernel, stride, padding, dilation, op);
  ExecContext ctx = choose_context({x_obj}, stream);
  Tensor x = import_tensor(x_obj, DType::f32, op, "x", ctx);
  check_rank(x, 4, "[N, C, H, W]", op, "x");
  int64_t OH = pooled_size(x.dim(2), g.kernel.h, g.stride.h, g.pads.top, g.pads.bottom, g.dilation.h, ceil_mode);
  int64_t OW = pooled_size(x.dim(3), g.kernel.w, g.stride.w, g.pads.left, g.pads.right, g.dilation.w, ceil_mode);
  if (OH <= 0 || OW <= 0) {
    throw py::value_error(arg_name(op, "x") + ": a map of " + std::to_string(x.dim(2)) + "x" + std::to_string(x.dim(3)) +
                          " with this padding is smaller than the dilated " + std::to_string(g.kernel.h) + "x" +
                          std::to_string(g.kernel.w) + " window");
  }
  PoolGeometry pg = make_pool_geometry(g, x.dim(0), x.dim(1), x.dim(2), x.dim(3), OH, OW);
  std::vector<int64_t> out_shape{pg.N, pg.C, OH, OW};
  void* y = nullptr;
  void* s = nullptr;
  py::object y_obj = new_output(DType::f32, out_shape, ctx, &y);
  py::object s_obj = new_output(DType::u8, out_shape, ctx, &s);
  {
    py::gil_scoped_release nogil;
    if (ctx.device == DeviceKind::cpu) {
      use_cpu_threads();
      switch_pool_cpu(x.ptr<float>(), static_cast<float*>(y), static_cast<uint8_t*>(s), pg);
    } else {
#ifdef CNNVIZ_WITH_CUDA
      switch_pool_cuda(x.ptr<float>(), static_cast<float*>(y), static_cast<uint8_t*>(s), pg, ctx.stream);
#endif
    }
  }
  return py::make_tuple(y_obj, s_obj);
}

py::object unpool(py::object y_obj, py::object s_obj, py::object kernel, py::object stride, py::object padding,
                  py::object dilation, py::object output_size, py::object stream) {
  const char* op = "unpool";
  Geometry g = parse_geometry(kernel, stride, padding, dilation, op);
  if (output_size.is_none()) throw py::type_error(arg_name(op, "output_size") + " is required: the (H, W) of the map that was pooled");
  Pair out = parse_pair(output_size, op, "output_size", 0);
  ExecContext ctx = choose_context({y_obj, s_obj}, stream);
  Tensor y = import_tensor(y_obj, DType::f32, op, "y", ctx);
  Tensor sw = import_tensor(s_obj, DType::u8, op, "switches", ctx);
  check_rank(y, 4, "[N, C, OH, OW]", op, "y");
  check_shape(sw, y.shape, op, "switches");
  // The pooled map must be what this geometry makes of output_size, in floor or ceil mode.
  for (int axis = 0; axis < 2; ++axis) {
    int64_t in = axis ? out.w : out.h;
    int k = axis ? g.kernel.w : g.kernel.h, st = axis ? g.stride.w : g.stride.h, d = axis ? g.dilation.w : g.dilation.h;
    int lead = axis ? g.pads.left : g.pads.top, trail = axis ? g.pads.right : g.pads.bottom;
    int64_t have = y.dim(2 + axis);
    int64_t floor_n = pooled_size(in, k, st, lead, trail, d, false), ceil_n = pooled_size(in, k, st, lead, trail, d, true);
    if (have != floor_n && have != ceil_n) {
      throw py::value_error(arg_name(op, "output_size") + ": pooling " + std::to_string(in) + (axis ? " columns" : " rows") +
                            " with this geometry gives " + std::to_string(floor_n) + " (or " + std::to_string(ceil_n) +
                            " with ceil_mode), but 'y' has " + std::to_string(have));
    }
  }
  PoolGeometry pg = make_pool_geometry(g, y.dim(0), y.dim(1), out.h, out.w, y.dim(2), y.dim(3));
  void* x = nullptr;
  py::object x_obj = new_output(DType::f32, {pg.N, pg.C, pg.H, pg.W}, ctx, &x);
  {
    py::gil_scoped_release nogil;
    if (ctx.device == DeviceKind::cpu) {
      use_cpu_threads();
      unpool_cpu(y.ptr<float>(), sw.ptr<uint8_t>(), static_cast<float*>(x), pg);
    } else {
#ifdef CNNVIZ_WITH_CUDA
      unpool_cuda(y.ptr<float>(), sw.ptr<uint8_t>(), static_cast<float*>(x), pg, ctx.stream);
#endif
    }
  }
  return x_obj;
}

py::tuple unit_max(py::object a_obj, py::object stream) {
  const char* op = "unit_max";
  ExecContext ctx = choose_context({a_obj}, stream);
  Tensor a = import_tensor(a_obj, DType::f32, op, "a", ctx);
  check_rank(a, 4, "[N, C, H, W]", op, "a");
  int64_t rows = a.dim(0) * a.dim(1), hw = a.dim(2) * a.dim(3);
  if (hw > INT32_MAX) throw py::value_error(arg_name(op, "a") + ": a map of more than 2^31 positions cannot be indexed by int32");
  void* v = nullptr;
  void* p = nullptr;
  py::object v_obj = new_output(DType::f32, {a.dim(0), a.dim(1)}, ctx, &v);
  py::object p_obj = new_output(DType::i32, {a.dim(0), a.dim(1)}, ctx, &p);
  {
    py::gil_scoped_release nogil;
    if (ctx.device == DeviceKind::cpu) {
      use_cpu_threads();
      unit_max_cpu(a.ptr<float>(), static_cast<float*>(v), static_cast<int32_t*>(p), rows, hw);
    } else {
#ifdef CNNVIZ_WITH_CUDA
      unit_max_cuda(a.ptr<float>(), static_cast<float*>(v), static_cast<int32_t*>(p), rows, hw, ctx.stream);
#endif
    }
  }
  return py::make_tuple(v_obj, p_obj);
}

void run_topk_merge(const Tensor& sv, const Tensor& si, const Tensor& sp, const Tensor& v, const Tensor& p,
                    const Tensor& ids, const ExecContext& ctx, const char* op) {
  check_rank(sv, 2, "[units, k]", op, "state_values");
  if (sv.dim(1) < 1) throw py::value_error(arg_name(op, "state_values") + ": k (its second dimension) must be at least 1");
  check_shape(si, sv.shape, op, "state_ids");
  check_shape(sp, sv.shape, op, "state_positions");
  check_rank(v, 2, "[batch, units]", op, "values");
  if (v.dim(1) != sv.dim(0)) {
    throw py::value_error(arg_name(op, "values") + " must have shape [batch, " + std::to_string(sv.dim(0)) +
                          "] (one column per unit of the state), got " + v.shape_str());
  }
  check_shape(p, v.shape, op, "positions");
  check_shape(ids, {v.dim(0)}, op, "image_ids");
  TopKShape s{sv.dim(0), sv.dim(1), v.dim(0)};
  py::gil_scoped_release nogil;
  if (ctx.device == DeviceKind::cpu) {
    use_cpu_threads();
    topk_merge_cpu(sv.ptr<float>(), si.ptr<int64_t>(), sp.ptr<int32_t>(), v.ptr<float>(), p.ptr<int32_t>(), ids.ptr<int64_t>(), s);
  } else {
#ifdef CNNVIZ_WITH_CUDA
    topk_merge_cuda(sv.ptr<float>(), si.ptr<int64_t>(), sp.ptr<int32_t>(), v.ptr<float>(), p.ptr<int32_t>(), ids.ptr<int64_t>(), s, ctx.stream);
#endif
  }
}

void topk_merge(py::object state_values, py::object state_ids, py::object state_positions, py::object values,
                py::object positions, py::object image_ids, py::object stream) {
  const char* op = "topk_merge";
  ExecContext ctx = choose_context({state_values, state_ids, state_positions, values, positions, image_ids}, stream);
  Tensor sv = import_inplace(state_values, DType::f32, op, "state_values", ctx);
  Tensor si = import_inplace(state_ids, DType::i64, op, "state_ids", ctx);
  Tensor sp = import_inplace(state_positions, DType::i32, op, "state_positions", ctx);
  Tensor v = import_tensor(values, DType::f32, op, "values", ctx);
  Tensor p = import_tensor(positions, DType::i32, op, "positions", ctx);
  Tensor ids = import_tensor(image_ids, DType::i64, op, "image_ids", ctx);
  run_topk_merge(sv, si, sp, v, p, ids, ctx, op);
}

}  // namespace cnnviz
