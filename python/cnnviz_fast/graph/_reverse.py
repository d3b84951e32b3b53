"""The reverse (deconvnet) plan of a layer: a graph of named tensors from the tapped tensor back to
the image.

Every image-dependent node on a path from the image to the tapped tensor gets its adjoint
(`Adjoint`), in reverse topological order (the graph's node order, reversed); a tensor consumed by
several of them receives the sum of their signals, added in that fixed order. `partition` cuts the
plan into ONNX Runtime segments around the native unpools (MaxPool): the one partition both the
segments here and the projector use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from . import _steps as S
from ._index import GraphIndex
from ._layers import Layer
from ._onnx import run_node
from ._local import Refuse as _Refuse, local_step, shape_of
from ._receptive import pad_amounts
from ._segments import MODES, OrtSegment, build_segment
from .errors import UnsupportedOp

_IDENTITY_OPS = {"LRN", "Dropout", "Identity"}
_RESHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}
_CHAIN_STEPS = (S.ConvT, S.GemmT, S.Reshape, S.Relu, S.Unpool, S.AvgPoolT, S.PadCrop, S.Scale, S.Identity)


@dataclass(frozen=True, eq=False)
class Part:
    """One ONNX Runtime segment of a plan and the native unpool after it (None for the last).

    `inputs`: the tensors whose signals (partial sums) enter, in order, repeated where a tensor
    gets two (the first part's input is the tapped tensor, made from the seeds); `outputs`: the
    tensors whose partial sums it hands on, in order, then (when `unpool` is set) the signal of the
    MaxPool's output, which the unpool turns into one more signal of the MaxPool's input. The last
    part's only output is the image.
    """

    adjoints: tuple[S.Adjoint, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    unpool: S.Unpool | None

    @property
    def steps(self) -> list[S.Step]:
        return [a.step for a in self.adjoints]


@dataclass(eq=False)
class ReversePlan:
    """The adjoints from `layer`'s tensor back to the image input (`image`), first step first.

    `adjoints` wire each step to tensor names; `steps` are their steps alone. `is_chain`: every
    step is one of the chain step types with one signal in and out (the plans the windowed
    projector runs). `forward_outputs` are the forward tensors a pass may read: the tapped tensor,
    every MaxPool input (switches), every ReLU output (guided / gradient masks) and the forward
    values of the true local adjoints, without duplicates (`forward_tensors(mode)`: those `mode`
    reads).
    """

    layer: Layer
    image: str
    adjoints: list[S.Adjoint]
    _segments: dict = field(default_factory=dict, repr=False)
    _parts: list = field(default_factory=list, repr=False)

    @property
    def steps(self) -> list[S.Step]:
        return [a.step for a in self.adjoints]

    @property
    def is_chain(self) -> bool:
        seen = set()
        for a in self.adjoints:
            if not isinstance(a.step, _CHAIN_STEPS) or len(a.inputs) != 1 or a.inputs[0] in seen:
                return False
            seen.add(a.inputs[0])
        return True

    @property
    def switch_tensors(self) -> list[str]:
        return [s.input_tensor for s in self.steps if isinstance(s, S.Unpool)]

    @property
    def relu_tensors(self) -> list[str]:
        return [s.tensor if isinstance(s, S.Relu) else s.extra["mask"] for s in self.steps
                if isinstance(s, S.Relu) or (isinstance(s, S.Local) and "mask" in s.extra)]

    @property
    def local_tensors(self) -> list[str]:
        return [t for s in self.steps if isinstance(s, S.Local) for t in s.forward]

    @property
    def forward_outputs(self) -> list[str]:
        return list(dict.fromkeys([self.layer.tensor, *self.switch_tensors, *self.relu_tensors,
                                   *self.local_tensors]))

    def forward_tensors(self, mode: str) -> list[str]:
        """The forward tensors a pass in `mode` reads (deconvnet needs no ReLU masks)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        relus = self.relu_tensors if mode != "deconvnet" else []
        return list(dict.fromkeys([self.layer.tensor, *self.switch_tensors, *relus, *self.local_tensors]))

    def partition(self) -> list[Part]:
        """The plan cut at its native unpools (see `Part`); computed once."""
        if not self._parts:
            self._parts.extend(_partition(self.adjoints, self.layer.tensor, self.image))
        return self._parts

    def segments(self, mode: str = "deconvnet") -> list[OrtSegment | S.Unpool]:
        """A chain plan as ONNX Runtime segments alternating with native Unpool steps.

        Each part with work becomes one `OrtSegment` (Identity-only parts vanish); in "guided" /
        "gradient" mode a segment's ReLUs read forward tensors (`mask_inputs`). Built once per
        mode, then returned from a cache (do not modify the list). Graph plans run in the projector.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if not self.is_chain:
            raise ValueError(f"layer {self.layer.name}: a graph plan runs in the Projector, not as a "
                             "chain of segments")
        if mode not in self._segments:
            out: list[OrtSegment | S.Unpool] = []
            for part in self.partition():
                if any(not _is_noop(s) for s in part.steps):
                    out.append(build_segment(part.steps, mode))
                if part.unpool is not None:
                    out.append(part.unpool)
            self._segments[mode] = out
        return self._segments[mode]


def _partition(adjoints: list[S.Adjoint], tap: str, image: str) -> list[Part]:
    parts: list[Part] = []
    inputs: list[str] = [tap]
    open_: dict[str, None] = {tap: None}
    run: list[S.Adjoint] = []
    for a in adjoints:
        for t in a.outputs:
            open_.pop(t, None)
        if isinstance(a.step, S.Unpool):
            rest = list(open_)
            parts.append(Part(tuple(run), tuple(inputs), tuple(rest) + a.outputs[:1], a.step))
            inputs, run = rest + [a.inputs[0]], []
            open_.setdefault(a.inputs[0], None)
            continue
        run.append(a)
        for t in a.inputs:
            open_.setdefault(t, None)
    if list(open_) != [image]:
        raise AssertionError(f"plan ends with signals of {list(open_)}, not just the image")
    parts.append(Part(tuple(run), tuple(inputs), (image,), None))
    return parts


def _is_noop(step: S.Step) -> bool:
    return isinstance(step, S.Identity) or (isinstance(step, S.AvgPoolT) and step.is_identity)


def reverse_plan(idx: GraphIndex, layer: Layer, blocked_layers) -> ReversePlan:
    """Build `layer`'s plan; `blocked_layers(node_index)` names the layers a failing node blocks."""
    nodes = _on_path(idx, layer.tensor)
    wanted = {layer.tensor} | {t for i in nodes for t in idx.data_inputs(i)}
    adjoints = []
    for i in sorted(nodes, reverse=True):
        node = idx.nodes[i]
        try:
            adjoints.append(_adjoint(idx, i, wanted))
        except _Refuse as exc:
            raise UnsupportedOp(idx.names[i], node.op_type, blocked_layers(i), "reverse plan",
                                str(exc)) from None
    return ReversePlan(layer, idx.image, adjoints)


def _on_path(idx: GraphIndex, tap: str) -> set[int]:
    """Nodes on an image-dependent path from the image to `tap`."""
    found: set[int] = set()
    stack = [tap]
    while stack:
        t = stack.pop()
        if t == idx.image:
            continue
        i = idx.producer.get(t)
        if i is None:
            raise _Refuse(f"tensor {t!r} depends on the image but has no producer")
        if i not in found:
            found.add(i)
            stack.extend(idx.data_inputs(i))
    return found


def _adjoint(idx: GraphIndex, i: int, wanted: set[str]) -> S.Adjoint:
    node = idx.nodes[i]
    data = idx.data_inputs(i)
    used = tuple(t for t in node.output if t in wanted)
    if len(data) == 1 and used == (node.output[0],):
        step = _step(idx, i, data[0], node.output[0])
        if step is not None:
            return S.Adjoint(step, used, (data[0],))
    step = local_step(idx, i)
    return S.Adjoint(step, tuple(step.outputs), tuple(t for t, d in zip(step.inputs, step.data) if d))


def _shape(idx: GraphIndex, t: str) -> tuple[int, ...]:
    return shape_of(idx, t)


def _step(idx: GraphIndex, i: int, x: str, y: str) -> S.Step | None:
    """The chain step of node i (one data input x, output y), None when it needs a Local step."""
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
    return None


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
    from onnx import helper

    node = idx.nodes[i]
    one = helper.make_node("AveragePool", ["x"], ["y"], **idx.attrs(i))
    y = run_node(one, {"x": np.ones((1, 1, *g.in_hw), np.float32)}, idx.opset)[0][0, 0].astype(np.float64)
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


def _elementwise(idx: GraphIndex, i: int, x: str, y: str, base: dict) -> S.Step | None:
    node, op = idx.nodes[i], idx.nodes[i].op_type
    other = node.input[1] if node.input[0] == x else node.input[0]
    c = idx.constant(other)
    if c is None:
        raise _Refuse("the other operand is not a constant")
    if idx.shape(x) != idx.shape(y):
        return None  # broadcasting to a larger shape: a Local step sums the signal back
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
