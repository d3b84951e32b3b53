"""ONNX Runtime segments: runs of reverse-plan steps as small ONNX models.

A segment has the input "x" [S, *in_shape] (S seeds, dynamic), the output "y" [S, *out_shape],
and in "guided" / "gradient" mode one extra input per ReLU ("mask0", ...) that takes the forward
ReLU output gathered per seed; `mask_inputs` maps those input names to forward tensor names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import _steps as S

MODES = ("deconvnet", "guided", "gradient")
SEGMENT_OPSET = 17
SEGMENT_IR_VERSION = 8


@dataclass(frozen=True, eq=False)
class OrtSegment:
    """One ONNX Runtime model for `steps`; feed "x" (and the mask inputs), read "y"."""

    proto: onnx.ModelProto
    steps: tuple[S.Step, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mask_inputs: tuple[tuple[str, str], ...]
    input: str = "x"
    output: str = "y"

    native = False


def build_segment(steps: Sequence[S.Step], mode: str = "deconvnet") -> OrtSegment:
    """The ONNX model running the non-native `steps` in order (the adjoint of their forward ops).

    A projector that computes inside a window may pass steps rebuilt with `dataclasses.replace`
    (smaller shapes, shifted pads); shapes and geometry are read from the steps alone.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not steps or any(s.native for s in steps):
        raise ValueError("a segment needs at least one step and no native (Unpool) step")
    b = _Builder()
    x, masks = "x", []
    for step in steps:
        x = _emit(b, step, x, mode, masks)
    if x == "x":
        x = b.node("Identity", [x])
    b.nodes[-1].output[0] = "y"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", *steps[0].in_shape])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["S", *shape])
               for name, _, shape in masks]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["S", *steps[-1].out_shape])]
    graph = helper.make_graph(b.nodes, "cnnviz_reverse_segment", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SEGMENT_OPSET)],
                              producer_name="cnnviz_fast")
    model.ir_version = SEGMENT_IR_VERSION
    return OrtSegment(model, tuple(steps), tuple(steps[0].in_shape), tuple(steps[-1].out_shape),
                      tuple((name, tensor) for name, tensor, _ in masks))


class _Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.fresh("t")
        self.nodes.append(helper.make_node(op, inputs, [out], self.fresh(op + "_"), **attrs))
        return out


def _emit(b: _Builder, step: S.Step, x: str, mode: str, masks: list) -> str:
    if isinstance(step, S.Relu):
        if mode == "deconvnet":
            return b.node("Relu", [x])
        name = f"mask{len(masks)}"
        masks.append((name, step.tensor, step.in_shape))
        keep = b.node("Greater", [name, b.const(np.zeros((), np.float32))])
        signal = b.node("Relu", [x]) if mode == "guided" else x
        return b.node("Where", [keep, signal, b.const(np.zeros((), np.float32))])
    if isinstance(step, S.ConvT):
        return _conv_transpose(b, x, step.weight, step, step.group)
    if isinstance(step, S.GemmT):
        return b.node("MatMul", [x, b.const(step.matrix.astype(np.float32, copy=False), "w")])
    if isinstance(step, S.Reshape):
        return b.node("Reshape", [x, b.const(np.array([0, *step.out_shape], np.int64))])
    if isinstance(step, S.AvgPoolT):
        if step.is_identity:
            return x
        c = step.out_shape[0]
        scaled = b.node("Mul", [x, b.const(step.inv_divisor.astype(np.float32))])
        ones = np.ones((c, 1, *step.kernel), np.float32)
        return _conv_transpose(b, scaled, ones, step, c)
    if isinstance(step, S.PadCrop):
        return _crop(b, x, step)
    if isinstance(step, S.Scale):
        return b.node("Mul", [x, b.const(step.factor.astype(np.float32))])
    if isinstance(step, S.Identity):
        return x
    raise TypeError(f"no ONNX form for step {type(step).__name__}")


def _conv_transpose(b: _Builder, x: str, weight: np.ndarray, step, group: int) -> str:
    """ConvTranspose whose output is exactly the forward input's size.

    Rows the forward op never read (dropped by floor division) come back as output_padding;
    windows running past the padded input (ceil_mode) are cut by a larger end pad.
    """
    pads, extra = list(step.pads), []
    for a in range(2):
        eff = step.dilations[a] * (weight.shape[2 + a] - 1) + 1
        full = step.strides[a] * (step.in_shape[1 + a] - 1) + eff - pads[a] - pads[2 + a]
        missing = step.out_shape[1 + a] - full
        if missing < 0:
            pads[2 + a] -= missing
            missing = 0
        extra.append(missing)
    out_pad = [e if e < s else 0 for e, s in zip(extra, step.strides)]
    y = b.node("ConvTranspose", [x, b.const(weight.astype(np.float32), "w")], strides=list(step.strides),
               pads=pads, dilations=list(step.dilations), group=int(group), output_padding=out_pad)
    if any(e >= s and e > 0 for e, s in zip(extra, step.strides)):
        tail = [e if e >= s else 0 for e, s in zip(extra, step.strides)]
        y = b.node("Pad", [y, b.const(np.array([0, 0, 0, 0, 0, 0, *tail], np.int64))])
    return y


def _crop(b: _Builder, x: str, step: S.PadCrop) -> str:
    begins, ends = step.pads[:3], step.pads[3:]
    dims = step.in_shape
    if any(p > 0 for p in step.pads):
        starts = [max(p, 0) for p in begins]
        stops = [d - max(e, 0) for d, e in zip(dims, ends)]
        x = b.node("Slice", [x, b.const(np.array(starts, np.int64)), b.const(np.array(stops, np.int64)),
                             b.const(np.array([1, 2, 3], np.int64))])
    if any(p < 0 for p in step.pads):
        grow = [0, *[max(-p, 0) for p in begins], 0, *[max(-p, 0) for p in ends]]
        x = b.node("Pad", [x, b.const(np.array(grow, np.int64))])
    return x
