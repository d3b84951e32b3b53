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
from onnx import TensorProto, helper

from . import _steps as S
from ._adjoints import emit_local
from ._onnx import Builder, make_model

MODES = ("deconvnet", "guided", "gradient")


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
    """The ONNX model running the non-native chain `steps` in order (the adjoint of their forward
    ops).

    A projector that computes inside a window may pass steps rebuilt with `dataclasses.replace`
    (smaller shapes, shifted pads); shapes and geometry are read from the steps alone.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not steps or any(s.native for s in steps):
        raise ValueError("a segment needs at least one step and no native (Unpool) step")
    b = Builder()
    masks: list = []

    def mask(tensor: str, shape) -> str:
        name = f"mask{len(masks)}"
        masks.append((name, tensor, shape))
        return name

    x = "x"
    for step in steps:
        x = emit_step(b, step, x, mode, mask)
    if x == "x":
        x = b.node("Identity", [x])
    b.nodes[-1].output[0] = "y"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", *steps[0].in_shape])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["S", *shape])
               for name, _, shape in masks]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["S", *steps[-1].out_shape])]
    model = make_model(b.nodes, inputs, outputs, b.inits, "cnnviz_reverse_segment")
    return OrtSegment(model, tuple(steps), tuple(steps[0].in_shape), tuple(steps[-1].out_shape),
                      tuple((name, tensor) for name, tensor, _ in masks))


def emit_adjoints(b: Builder, adjoints: Sequence[S.Adjoint], signals: dict[str, list[str]], mode: str,
                  fwd) -> None:
    """Emit `adjoints` in order into `b`. `signals` maps a forward tensor to the names of the signals
    it has received so far (updated in place: a step's output signals are summed, in arrival
    order, and consumed; its input signals appended). `fwd(t)` names forward tensor t gathered per
    seed."""
    for a in adjoints:
        outs = [total(b, signals.pop(t, [])) for t in a.outputs]
        if isinstance(a.step, S.Local):
            got = emit_local(b, a.step, outs, mode, fwd)
        elif outs[0] is None:
            got = [None]
        else:
            got = [emit_step(b, a.step, outs[0], mode, lambda tensor, shape: fwd(tensor))]
        for t, signal in zip(a.inputs, got):
            if signal is not None:
                signals.setdefault(t, []).append(signal)


def total(b: Builder, parts: list[str]) -> str | None:
    """The sum of `parts` in their order (None when there are none)."""
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b.node("Sum", list(parts))


def emit_step(b: Builder, step: S.Step, x: str, mode: str, mask) -> str:
    """The ONNX form of chain step `step` on signal `x`; `mask(tensor, shape)` names the forward
    ReLU output a guided / gradient ReLU reads."""
    if isinstance(step, S.Relu):
        if mode == "deconvnet":
            return b.node("Relu", [x])
        keep = b.node("Greater", [mask(step.tensor, step.in_shape), b.const(np.zeros((), np.float32))])
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


def _conv_transpose(b: Builder, x: str, weight: np.ndarray, step, group: int) -> str:
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


def _crop(b: Builder, x: str, step: S.PadCrop) -> str:
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
