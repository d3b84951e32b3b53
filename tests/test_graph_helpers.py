"""Shared helpers for the graph-compiler tests (test_graph_*.py); the few tests here check them.

- ONNX Runtime runs and torch exports of small models;
- `Skeleton`: a torch model made linear with dense gradient support, for receptive-field checks;
- `DeconvRelu` / `SkipLRN`: the autograd deconvnet oracle;
- `run_plan`: executes a ReversePlan (ORT segments + the NumPy reference unpool), a tiny projector.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from cnnviz_fast import _reference as ref
from cnnviz_fast.graph import Unpool


def session(proto: onnx.ModelProto | bytes) -> ort.InferenceSession:
    raw = proto if isinstance(proto, bytes) else proto.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])


def run(proto, feeds: dict, outputs=None) -> dict:
    sess = session(proto)
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def export_torch(module: nn.Module, input_size, opset: int = 17) -> onnx.ModelProto:
    """torch.onnx export (TorchScript exporter; dynamo needs onnxscript), dynamic batch."""
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *input_size),), buf, input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": {0: "n"}, "out": {0: "n"}},
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def relu_names(proto: onnx.ModelProto) -> list[str]:
    """Output tensor names of the Relu nodes in graph order (= call order for a traced Sequential)."""
    return [n.output[0] for n in proto.graph.node if n.op_type == "Relu"]


# ---- receptive-field oracle ----------------------------------------------------------------------

class _Tap(nn.Module):
    """Stands in for a tapped ReLU: identity that keeps its output for autograd."""

    def forward(self, x):
        self.out = x
        return x


class _SumConv(nn.Module):
    """A Conv2d's geometry on the channel sum with an all-ones kernel (1 channel out)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        ones = torch.ones(1, 1, *c.kernel_size, dtype=x.dtype)
        return F.conv2d(x.sum(1, keepdim=True), ones, None, c.stride, c.padding, c.dilation)


class _SumPool(nn.Module):
    """A MaxPool2d's windows summed instead of maxed (same output size, ceil_mode included)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        p = self.pool
        k, s = nn.modules.utils._pair(p.kernel_size), nn.modules.utils._pair(p.stride or p.kernel_size)
        pad, dil = nn.modules.utils._pair(p.padding), nn.modules.utils._pair(p.dilation)
        with torch.no_grad():
            oh, ow = F.max_pool2d(x, k, s, pad, dil, p.ceil_mode).shape[-2:]
        # Extra zeros at the end stand for windows that ceil_mode lets run past the input.
        xp = F.pad(x, (pad[1], pad[1] + s[1], pad[0], pad[0] + s[0]))
        ones = torch.ones(x.shape[1], 1, *k, dtype=x.dtype)
        return F.conv2d(xp, ones, None, s, 0, dil, groups=x.shape[1])[..., :oh, :ow]


class _SumAll(nn.Module):
    def forward(self, x):
        return x.sum(-1, keepdim=True)


class Skeleton:
    """`module` made linear with positive weights, so gradient support = receptive field.

    The true gradient of a ReLU net is sparse (dead units, the single argmax of each max-pool
    window), so its support would undercount the field. The same module with every ReLU, LRN and
    BatchNorm made identity, every max-pool a sum over the same windows, every Conv a ones-kernel
    conv of the channel sum and every Linear a sum, has the same geometry and a gradient that is a
    sum of positive terms: nonzero exactly on the union of the windows, i.e. on the field.
    `taps` are (name, nn.ReLU) of the original module; `outputs()` gives name -> tapped tensor.
    """

    def __init__(self, module: nn.Module, taps):
        self.module = module.eval()
        self.taps = {}
        by_id = {id(relu): name for name, relu in taps}
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                new = self._replacement(child, by_id)
                if new is not None:
                    setattr(parent, child_name, new)

    def _replacement(self, m: nn.Module, by_id: dict) -> nn.Module | None:
        if isinstance(m, nn.ReLU):
            tap = _Tap()
            if id(m) in by_id:
                self.taps[by_id[id(m)]] = tap
            return tap
        if isinstance(m, nn.Conv2d):
            return _SumConv(m)
        if isinstance(m, nn.MaxPool2d):
            return _SumPool(m)
        if isinstance(m, nn.Linear):
            return _SumAll()
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)) or type(m).__name__ == "LocalResponseNorm":
            return nn.Identity()
        return None

    def boxes(self, input_hw, queries):
        """Bounding boxes (top, left, bottom, right) of the gradient support of each (name, y, x);
        None where the support is empty (a position that sees only padding). Query b uses batch
        element b, so one backward pass answers all of them."""
        x = torch.ones(len(queries), 3, *input_hw, requires_grad=True)
        self.module(x)
        names = sorted({name for name, _, _ in queries})
        outs = [self.taps[name].out for name in names]
        seeds = [torch.zeros_like(o) for o in outs]
        for b, (name, y, xx) in enumerate(queries):
            seed = seeds[names.index(name)]
            seed[(b, 0, y, xx) if seed.dim() == 4 else (b, 0)] = 1.0
        (grad,) = torch.autograd.grad(outs, x, grad_outputs=seeds)
        out = []
        for g in grad.abs().sum(1) > 0:
            rows = torch.nonzero(g.any(1)).ravel()
            cols = torch.nonzero(g.any(0)).ravel()
            out.append(None if not len(rows) else
                       (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
        return out


def probe_positions(h: int, w: int) -> list[tuple[int, int]]:
    """Two opposite corners (both sides of asymmetric pads), two edge midpoints and the centre."""
    pts = [(0, 0), (h - 1, w - 1), (0, w // 2), (h // 2, w - 1), (h // 2, w // 2)]
    return list(dict.fromkeys(pts))


# ---- deconvnet oracle ---------------------------------------------------------------------------

class DeconvRelu(torch.autograd.Function):
    """ReLU whose backward follows a projection mode instead of the true gradient."""

    @staticmethod
    def forward(ctx, x, mode):
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        ctx.mode = mode
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if ctx.mode == "deconvnet":
            return g.clamp_min(0), None
        if ctx.mode == "guided":
            return g.clamp_min(0) * (y > 0), None
        return g * (y > 0), None


class SkipLRN(torch.autograd.Function):
    """LRN forward, identity backward (ZF: no normalisation in the reconstruction path)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


# ---- a tiny projector ---------------------------------------------------------------------------

def run_plan(model, layer, x: np.ndarray, seeds, mode: str = "deconvnet") -> np.ndarray:
    """Project `seeds` [(n, c, y, x)] of `layer` for images x: ORT segments + reference unpool."""
    plan = model.reverse_plan(layer)
    fwd = run(model.projection_graph(layer), {model.input_name: x})
    tap = fwd[plan.layer.tensor]
    signal = np.zeros((len(seeds), *tap.shape[1:]), np.float32)
    for k, (n, c, *pos) in enumerate(seeds):
        signal[(k, c, *pos)] = tap[(n, c, *pos)]
    return apply_plan(plan, signal, fwd, [s[0] for s in seeds], mode)


def apply_plan(plan, signal: np.ndarray, fwd: dict, rows, mode: str = "deconvnet") -> np.ndarray:
    """Run `plan`'s segments on `signal` [S, ...]; row s uses image rows[s] of the forward `fwd`."""
    rows = np.asarray(rows)
    for seg in plan.segments(mode):
        if isinstance(seg, Unpool):
            _, switches = ref.switch_pool(fwd[seg.input_tensor], seg.kernel, seg.strides, seg.pads,
                                          seg.dilations, seg.ceil_mode)
            signal = ref.unpool(signal, switches[rows], seg.kernel, seg.strides, seg.pads,
                                seg.dilations, output_size=seg.out_shape[1:])
        else:
            feeds = {seg.input: signal}
            feeds.update({name: fwd[tensor][rows] for name, tensor in seg.mask_inputs})
            signal = run(seg.proto, feeds, [seg.output])[seg.output]
    return signal


# ---- foreign models built with onnx.helper ------------------------------------------------------

def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def make_model(nodes, inits, input_shape, opset: int = 17, outputs=("out",),
               input_name: str = "pixels") -> onnx.ModelProto:
    """A model from helper nodes; graph outputs typed by shape inference."""
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    typed = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(typed.graph.output)
    return model


def foreign_model(middle: str | None = None, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """A CNN written with onnx.helper, as another framework might export it (fixed batch 1):

    conv1(+bias) -> BN -> Relu "act1" -> MaxPool 3/2 (pads bottom/right 1, ceil) -> [middle] ->
    Pad (top 2, right 1) -> conv2 (no bias, stride 2) -> BN -> Relu (unnamed) -> Flatten ->
    Gemm (transB) -> Relu "fc_act" -> Gemm -> "logits". `middle` is an op type inserted after the
    pool (e.g. "Sigmoid"), named "/features/Sigmoid_1" as exporters name nodes.
    """
    rng = np.random.default_rng(seed)

    def rand(*shape, lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    def bn(prefix, c):
        return [const(f"{prefix}_{k}", v) for k, v in (("scale", rand(c, lo=0.5, hi=1.5)), ("b", rand(c)),
                                                        ("mean", rand(c)), ("var", rand(c, lo=0.2, hi=2)))]

    inits = [const("w1", rand(6, 3, 3, 3)), const("b1", rand(6)), *bn("bn1", 6),
             const("pads", np.array([0, 0, 2, 0, 0, 0, 0, 1], np.int64)),
             const("w2", rand(8, 6, 3, 3)), *bn("bn2", 8),
             const("fc1_w", rand(16, 8 * 6 * 5, lo=-0.2, hi=0.2)), const("fc1_b", rand(16)),
             const("fc2_w", rand(16, 5)), const("fc2_b", rand(5))]
    after_pool = "pool1"
    nodes = [
        helper.make_node("Conv", ["pixels", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_b", "bn1_mean", "bn1_var"], ["n1"],
                         "bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], "act1"),
        helper.make_node("MaxPool", ["r1"], ["pool1"], "pool1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1], ceil_mode=1),
    ]
    if middle:
        nodes.append(helper.make_node(middle, ["pool1"], ["mid"], "/features/Sigmoid_1"
                                      if middle == "Sigmoid" else f"/features/{middle}"))
        after_pool = "mid"
    nodes += [
        helper.make_node("Pad", [after_pool, "pads"], ["padded"], "pad", mode="constant"),
        helper.make_node("Conv", ["padded", "w2"], ["c2"], "conv2", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_b", "bn2_mean", "bn2_var"], ["n2"], "bn2"),
        helper.make_node("Relu", ["n2"], ["relu2_out"]),
        helper.make_node("Flatten", ["relu2_out"], ["flat"], "flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["g1"], "fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["f1"], "fc_act"),
        helper.make_node("Gemm", ["f1", "fc2_w", "fc2_b"], ["logits"], "fc2", alpha=0.5),
    ]
    return make_model(nodes, inits, [batch, 3, 21, 21], outputs=("logits",))


def test_skeleton_box_of_a_single_conv():
    conv = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.ReLU())
    sk = Skeleton(conv, [("c", conv[1])])
    assert sk.boxes((9, 9), [("c", 0, 0), ("c", 4, 4)]) == [(0, 0, 2, 2), (7, 7, 9, 9)]


def test_sum_pool_keeps_ceil_mode_size():
    pool = _SumPool(nn.MaxPool2d(3, 2, ceil_mode=True))
    assert pool(torch.ones(1, 1, 110, 110)).shape[-2:] == (55, 55)
