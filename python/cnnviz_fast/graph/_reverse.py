"""The reverse (deconvnet) plan of a layer: walk from the tapped tensor back to the image."""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from . import _steps as S
from ._index import GraphIndex
from ._layers import Layer
from ._receptive import pad_amounts
from ._segments import MODES, OrtSegment, build_segment
from .errors import UnsupportedOp

_IDENTITY_OPS = {"LRN", "Dropout", "Identity"}
_RESHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}


@dataclass(eq=False)
class ReversePlan:
    """Steps from `layer`'s tensor back to the image input (`image`), first step first.

    `forward_outputs` are the forward tensors the projector must compute for one image batch:
    the tapped tensor, every MaxPool input (switches) and every ReLU output (guided / gradient
    masks), without duplicates.
    """

    layer: Layer
    image: str
    steps: list[S.Step]
    _segments: dict = field(default_factory=dict, repr=False)

    @property
    def switch_tensors(self) -> list[str]:
        return [s.input_tensor for s in self.steps if isinstance(s, S.Unpool)]

    @property
    def relu_tensors(self) -> list[str]:
        return [s.tensor for s in self.steps if isinstance(s, S.Relu)]

    @property
    def forward_outputs(self) -> list[str]:
        return list(dict.fromkeys([self.layer.tensor, *self.switch_tensors, *self.relu_tensors]))

    def segments(self, mode: str = "deconvnet") -> list[OrtSegment | S.Unpool]:
        """The plan as ONNX Runtime segments alternating with native Unpool steps.

        Runs of non-native steps become one `OrtSegment` each (Identity-only runs vanish); in
        "guided" / "gradient" mode a segment's ReLUs read forward tensors (`mask_inputs`).
        Built once per mode, then returned from a cache (do not modify the list).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode not in self._segments:
            self._segments[mode] = self._build(mode)
        return self._segments[mode]

    def _build(self, mode: str) -> list[OrtSegment | S.Unpool]:
        out: list[OrtSegment | S.Unpool] = []
        run: list[S.Step] = []
        for step in self.steps + [None]:
            if step is None or step.native:
                if any(not _is_noop(s) for s in run):
                    out.append(build_segment(run, mode))
                run = []
                if step is not None:
                    out.append(step)
            else:
                run.append(step)
        return out


def _is_noop(step: S.Step) -> bool:
    return isinstance(step, S.Identity) or (isinstance(step, S.AvgPoolT) and step.is_identity)


def reverse_plan(idx: GraphIndex, layer: Layer, blocked_layers) -> ReversePlan:
    """Build `layer`'s plan; `blocked_layers(node_index)` names the layers a failing node blocks."""
    steps = []
    t = layer.tensor
    while t != idx.image:
        i = idx.producer[t]
        node = idx.nodes[i]
        data = idx.data_inputs(i)
        try:
            if len(data) != 1:
                raise _Refuse(f"{len(data)} image-dependent inputs; the reverse plan needs a chain")
            if t != node.output[0]:
                raise _Refuse(f"the path uses its output {t!r}, not its first output")
            steps.append(_step(idx, i, data[0], t))
        except _Refuse as exc:
            raise UnsupportedOp(idx.names[i], node.op_type, blocked_layers(i), "reverse plan",
                                str(exc)) from None
        t = data[0]
    return ReversePlan(layer, idx.image, steps)


class _Refuse(Exception):
    pass


def _shape(idx: GraphIndex, t: str) -> tuple[int, ...]:
    s = idx.shape(t)
    if s is None or len(s) < 2 or not all(isinstance(d, int) for d in s[1:]):
        raise _Refuse(f"tensor {t!r} has no static shape")
    return tuple(int(d) for d in s[1:])


def _step(idx: GraphIndex, i: int, x: str, y: str) -> S.Step:
    node, op, a = idx.nodes[i], idx.nodes[i].op_type, idx.attrs(i)
    base = dict(node=idx.names[i], op_type=op, in_shape=_shape(idx, y), out_shape=_shape(idx, x))
    if op == "Relu":
        return S.Relu(**base, tensor=y)
    if op in _IDENTITY_OPS or (op == "Cast" and idx.shape(x) == idx.shape(y)):
        return S.Identity(**base)
    if op == "Conv":
        return _conv(idx, i, x, base)
    if op == "MaxPool":
        _first_input(node, x)
        g = idx.geometry(i)
        if g.kernel[0] * g.kernel[1] > 255:
            raise _Refuse("pooling window over 255 elements (switches are uint8)")
        return S.Unpool(**base, kernel=g.kernel, strides=g.strides, pads=g.pads, dilations=g.dilations,
                        ceil_mode=g.ceil_mode, input_tensor=x, output_tensor=y)
    if op in ("AveragePool", "GlobalAveragePool"):
        return _avgpool(idx, i, x, base)
    if op in ("Gemm", "MatMul"):
        return _gemm(idx, i, x, a, base)
    if op in _RESHAPE_OPS:
        # Static non-batch dims with equal products mean the batch dimension is left alone.
        if prod(base["in_shape"]) != prod(base["out_shape"]):
            raise _Refuse("the reshape mixes the batch dimension")
        return S.Reshape(**base)
    if op == "Pad":
        pads = pad_amounts(idx, i)
        if pads is None or a.get("mode", "constant") != "constant" or pads[0] or pads[4]:
            raise _Refuse("only constant Pad with constant pads outside the batch dimension")
        return S.PadCrop(**base, pads=tuple(pads[1:4] + pads[5:8]))
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(idx, i, x, y, base)
    if op == "BatchNormalization":
        if a.get("training_mode", 0):
            raise _Refuse("training mode")
        scale, var = idx.constant(node.input[1]), idx.constant(node.input[4])
        if scale is None or var is None:
            raise _Refuse("parameters are not constant")
        factor = (scale / np.sqrt(var.astype(np.float64) + a.get("epsilon", 1e-5))).astype(np.float32)
        return S.Scale(**base, factor=factor.reshape(-1, *([1] * (len(base["out_shape"]) - 1))))
    raise _Refuse("")


def _first_input(node, x: str) -> None:
    if node.input[0] != x:
        raise _Refuse("the image data enters through a parameter input")


def _conv(idx: GraphIndex, i: int, x: str, base: dict) -> S.ConvT:
    node = idx.nodes[i]
    _first_input(node, x)
    w = idx.constant(node.input[1])
    if w is None:
        raise _Refuse("the weight is not a constant")
    g = idx.geometry(i)
    return S.ConvT(**base, weight=w.astype(np.float32, copy=False), strides=g.strides, pads=g.pads,
                   dilations=g.dilations, group=int(idx.attrs(i).get("group", 1)))


def _avgpool(idx: GraphIndex, i: int, x: str, base: dict) -> S.AvgPoolT:
    _first_input(idx.nodes[i], x)
    _, h, w = base["out_shape"]
    if idx.nodes[i].op_type == "GlobalAveragePool":
        return S.AvgPoolT(**base, kernel=(h, w), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                          ceil_mode=False, count_include_pad=False,
                          inv_divisor=np.full((1, 1), 1.0 / (h * w), np.float32))
    g = idx.geometry(i)
    cip = bool(idx.attrs(i).get("count_include_pad", 0))
    return S.AvgPoolT(**base, kernel=g.kernel, strides=g.strides, pads=g.pads, dilations=g.dilations,
                      ceil_mode=g.ceil_mode, count_include_pad=cip,
                      inv_divisor=_inv_divisor(idx, i, g))


def _inv_divisor(idx: GraphIndex, i: int, g) -> np.ndarray:
    """1 / divisor per output of AveragePool node i, read off ONNX Runtime's own forward.

    On a ones image each output is (in-image elements of its window) / divisor; counting those
    elements here gives the divisor, whatever convention ORT uses at padded or ceil_mode edges.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = idx.nodes[i]
    one = helper.make_node("AveragePool", ["x"], ["y"], **idx.attrs(i))
    graph = helper.make_graph([one], "avgpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [1, 1, *g.in_hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", idx.opset)])
    model.ir_version = min(model.ir_version, 8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ones((1, 1, *g.in_hw), np.float32)})[0][0, 0].astype(np.float64)
    counts = [_inside(g.in_hw[a], g.out_hw[a], g.kernel[a], g.strides[a], g.pads[a], g.dilations[a])
              for a in range(2)]
    inside = np.outer(counts[0], counts[1])
    if y.shape != inside.shape:
        raise _Refuse(f"node {node.name!r}: ONNX Runtime gives {y.shape}, expected {inside.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        divisor = np.where(inside > 0, np.rint(inside / y), 0)
        return np.where(divisor > 0, 1.0 / divisor, 0.0).astype(np.float32)


def _inside(size: int, out: int, k: int, s: int, pad: int, d: int) -> np.ndarray:
    starts = np.arange(out) * s - pad
    taps = starts[:, None] + np.arange(k)[None, :] * d
    return ((taps >= 0) & (taps < size)).sum(axis=1)


def _gemm(idx: GraphIndex, i: int, x: str, a: dict, base: dict) -> S.GemmT:
    node = idx.nodes[i]
    _first_input(node, x)
    w = idx.constant(node.input[1])
    if w is None or w.ndim != 2:
        raise _Refuse("the weight is not a constant matrix")
    w = w.astype(np.float32, copy=False)
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            raise _Refuse("transA=1 on the image data")
        # y = alpha * x @ B' with B' = B^T when transB: dx = dy @ (alpha * B'^T).
        m = w if a.get("transB", 0) else w.T
        alpha = float(a.get("alpha", 1.0))
        return S.GemmT(**base, matrix=m * np.float32(alpha) if alpha != 1.0 else m)
    return S.GemmT(**base, matrix=w.T)


def _elementwise(idx: GraphIndex, i: int, x: str, y: str, base: dict) -> S.Step:
    node, op = idx.nodes[i], idx.nodes[i].op_type
    other = node.input[1] if node.input[0] == x else node.input[0]
    c = idx.constant(other)
    if c is None:
        raise _Refuse("the other operand is not a constant")
    if idx.shape(x) != idx.shape(y):
        raise _Refuse("the constant broadcasts the image data to a larger shape")
    rank = len(base["out_shape"]) + 1
    if c.ndim == rank:
        if c.shape[0] != 1:
            raise _Refuse("the constant varies along the batch dimension")
        c = c[0]
    if op == "Add" or (op == "Sub" and node.input[0] == x):
        return S.Identity(**base)
    if op == "Sub":
        return S.Scale(**base, factor=np.full((1,), -1.0, np.float32))
    if op == "Div":
        if node.input[0] != x:
            raise _Refuse("division by the image data")
        c = 1.0 / c.astype(np.float64)
    return S.Scale(**base, factor=np.asarray(c, np.float32))
