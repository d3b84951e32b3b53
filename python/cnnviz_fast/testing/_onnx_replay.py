"""An ONNX CNN replayed op by op in torch (needs torch), so that the oracle can run hand-built ONNX
models: each op is the torch function of the same semantics, so autograd gives its true adjoint,
and Relu / Clip / LRN go through the calls the oracle's rule mode replaces. Every node output passes
through an nn.Identity probe, so any tensor can be tapped by name. Ops outside `_OPS` raise
NotImplementedError naming the op."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F


def _pads2d(a, n_spatial=2):
    pads = list(a.get("pads", [0] * (2 * n_spatial)))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise NotImplementedError("the oracle replays explicit pads only (auto_pad SAME_*)")
    return pads[:n_spatial], pads[n_spatial:]


def _padded(x, a, value=0.0):
    """x padded for a 2-D window op; returns (x, symmetric pads to pass to torch)."""
    begin, end = _pads2d(a)
    if begin == end:
        return x, begin
    return F.pad(x, (begin[1], end[1], begin[0], end[0]), value=value), [0, 0]


def _conv(ins, a):
    x, pads = _padded(ins[0], a)
    return F.conv2d(x, ins[1], ins[2] if len(ins) > 2 else None, a.get("strides", 1), pads,
                    a.get("dilations", 1), a.get("group", 1))


def _maxpool(ins, a):
    x, pads = _padded(ins[0], a, value=-torch.inf)
    return F.max_pool2d(x, a["kernel_shape"], a.get("strides", 1), pads, a.get("dilations", 1),
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def _avgpool(ins, a):
    include = bool(a.get("count_include_pad", 0))
    begin, end = _pads2d(a)
    x, pads = ins[0], begin
    if begin != end:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric pads and count_include_pad=0")
        x, pads = _padded(x, a)
    return F.avg_pool2d(x, a["kernel_shape"], a.get("strides", 1), pads, bool(a.get("ceil_mode", 0)),
                        count_include_pad=include)


def _gemm(ins, a):
    w = ins[1].T if a.get("transB", 0) else ins[1]
    x = ins[0].T if a.get("transA", 0) else ins[0]
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 else y


def _clip(ins, a):
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
    # Plain numbers, so that the rule mode sees clamp(min=0) as ReLU-like.
    lo, hi = (None if v is None else float(v) for v in (lo, hi))
    return torch.clamp(ins[0], min=lo, max=hi)


def _axes(ins, a):
    axes = a.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = ins[1].tolist()
    return axes


def _reduce_mean(ins, a):
    axes = _axes(ins, a)
    return ins[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1))) if axes else ins[0].mean()


def _slice(ins, a):
    starts, ends = ins[1].tolist(), ins[2].tolist()
    axes = ins[3].tolist() if len(ins) > 3 else list(range(len(starts)))
    steps = ins[4].tolist() if len(ins) > 4 else [1] * len(starts)
    index = [slice(None)] * ins[0].dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise NotImplementedError("Slice with a non-positive step")
        n = ins[0].shape[ax]
        index[ax] = slice(max(min(s, n), -n), max(min(e, n), -n), st)
    return ins[0][tuple(index)]


def _split(ins, a, n_out):
    axis = a.get("axis", 0)
    sizes = ins[1].tolist() if len(ins) > 1 and ins[1] is not None else a.get("split")
    if sizes is None:
        sizes = ins[0].shape[axis] // n_out
    return torch.split(ins[0], sizes, dim=axis)


def _reshape(ins, a):
    shape = ins[1].tolist()
    if not a.get("allowzero", 0):
        shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return ins[0].reshape(shape)


def _pad(ins, a):
    pads = ins[1].tolist() if len(ins) > 1 else a["pads"]
    value = float(ins[2]) if len(ins) > 2 and ins[2] is not None else a.get("value", 0.0)
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        raise NotImplementedError("Pad modes other than constant")
    half = len(pads) // 2
    torch_pads = []
    for axis in reversed(range(half)):  # F.pad lists the last axis first
        torch_pads += [pads[axis], pads[axis + half]]
    return F.pad(ins[0], torch_pads, value=value)


_OPS = {
    "Conv": _conv, "MaxPool": _maxpool, "AveragePool": _avgpool, "Gemm": _gemm, "Clip": _clip,
    "Relu": lambda ins, a: F.relu(ins[0]),
    "BatchNormalization": lambda ins, a: F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], False, 0.0,
                                                      a.get("epsilon", 1e-5)),
    "LRN": lambda ins, a: F.local_response_norm(ins[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75),
                                                a.get("bias", 1.0)),
    "GlobalAveragePool": lambda ins, a: ins[0].mean((2, 3), keepdim=True),
    # Not amax, which splits the gradient among ties: the switch is the first maximum.
    "GlobalMaxPool": lambda ins, a: F.adaptive_max_pool2d(ins[0], 1),
    "ReduceMean": _reduce_mean,
    "Flatten": lambda ins, a: torch.flatten(ins[0], a.get("axis", 1)),
    "Reshape": _reshape,
    "Transpose": lambda ins, a: ins[0].permute(a.get("perm", list(range(ins[0].dim()))[::-1])),
    "Squeeze": lambda ins, a: ins[0].squeeze(tuple(_axes(ins, a))) if _axes(ins, a) else ins[0].squeeze(),
    "Unsqueeze": lambda ins, a: ins[0].reshape(_unsqueezed(ins[0].shape, _axes(ins, a))),
    "Concat": lambda ins, a: torch.cat(ins, a["axis"]),
    "Slice": _slice, "Pad": _pad,
    "MatMul": lambda ins, a: ins[0] @ ins[1],
    "Add": lambda ins, a: ins[0] + ins[1], "Sub": lambda ins, a: ins[0] - ins[1],
    "Mul": lambda ins, a: ins[0] * ins[1], "Div": lambda ins, a: ins[0] / ins[1],
    "Sigmoid": lambda ins, a: torch.sigmoid(ins[0]), "Tanh": lambda ins, a: torch.tanh(ins[0]),
    "HardSigmoid": lambda ins, a: _hard_sigmoid(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5)),
    "HardSwish": lambda ins, a: F.hardswish(ins[0]),
    "LeakyRelu": lambda ins, a: F.leaky_relu(ins[0], a.get("alpha", 0.01)),
    "Erf": lambda ins, a: torch.erf(ins[0]),
    "Softplus": lambda ins, a: F.softplus(ins[0]),
    "Dropout": lambda ins, a: ins[0], "Identity": lambda ins, a: ins[0],
}


def _hard_sigmoid(y):
    # Not clamp(0, 1): the rule mode would take a clamp with min 0 for a ReLU.
    return torch.where(y <= 0, torch.zeros_like(y), torch.where(y >= 1, torch.ones_like(y), y))


def _unsqueezed(shape, axes):
    out = list(shape)
    rank = len(shape) + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        out.insert(ax, 1)
    return out


class OnnxNet(nn.Module):
    """`proto`'s graph as a torch module; initializers (and Constant nodes) become buffers, so
    `.double()` converts them like any module's weights."""

    def __init__(self, proto: onnx.ModelProto):
        super().__init__()
        self.nodes = list(proto.graph.node)
        self.image = proto.graph.input[0].name
        self.const_name = {}
        consts = [(t.name, numpy_helper.to_array(t)) for t in proto.graph.initializer]
        for node in self.nodes:
            if node.op_type == "Constant":
                consts.append((node.output[0], numpy_helper.to_array(node.attribute[0].t)))
        for i, (name, array) in enumerate(consts):
            self.register_buffer(f"c{i}", torch.from_numpy(np.array(array)), persistent=False)
            self.const_name[name] = f"c{i}"
        outputs = [o for n in self.nodes if n.op_type != "Constant" for o in n.output if o]
        self.probes = nn.ModuleList(nn.Identity() for _ in outputs)
        self.probe_of = dict(zip(outputs, self.probes))

    def tensor_taps(self) -> dict[str, nn.Module]:
        return dict(self.probe_of)

    def forward(self, x):
        env = {self.image: x, **{k: getattr(self, v) for k, v in self.const_name.items()}}
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            fn = _OPS.get(node.op_type)
            if fn is None and node.op_type != "Split":
                raise NotImplementedError(f"the oracle does not replay {node.op_type} (node {node.name!r})")
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            ins = [env[t] if t else None for t in node.input]
            outs = _split(ins, a, len(node.output)) if node.op_type == "Split" else (fn(ins, a),)
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = self.probe_of[name](value)
        return env[self.nodes[-1].output[0]]
