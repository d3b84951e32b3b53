"""Receptive fields of every image-dependent tensor, derived from the graph.

Per spatial axis a tensor's field is (size R, jump J, start S): position i of the tensor sees the
input interval [S + i*J, S + i*J + R). A window op with kernel k, stride s, dilation d and
leading pad p maps (R, J, S) to (R + (d*(k-1))*J, J*s, S - p*J); ceil_mode only changes how many
positions there are. Once a tensor mixes all positions (Flatten, Gemm, global pooling, ...) its
field is the whole input.

Layout: a field also records which tensor axes are H and W (`axes`, (2, 3) for NCHW), so that a
Transpose to channels-last and back (ConvNeXt's LayerNorm, a Keras model's NHWC input) keeps it,
and ops over the other axes — LayerNormalization, MatMul by a weight, Softmax, reductions over
channels — keep every position's field. Window ops need NCHW.

Gates: an input of a per-element op that is broadcast over H and W (a squeeze-excitation gate,
[N, C, 1, 1] from a global pool) only scales channels; it does not widen the field. The field is
that of the signal path, as the deconvnet draws it — through the gate the true gradient reaches
the whole image, but spread thin, and boxes of "the whole image" at every layer after the first
SE block would say nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._index import GraphIndex

# Ops that keep every position's field: per-element or per-position across channels only.
_POSITIONWISE = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Erf", "Gelu", "Mish", "Identity", "Dropout", "Cast", "LRN", "BatchNormalization",
    "InstanceNormalization", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean",
    "Where", "Floor", "Ceil", "Round", "Sign",
}
_WINDOWED = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_GLOBAL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten", "Gemm"}
_RESHAPING = {"Reshape", "Squeeze", "Unsqueeze"}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1",
           "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare"}
_NCHW = (2, 3)


@dataclass(frozen=True)
class Field:
    """Receptive field of a tensor: per axis (h, w) size, jump and start; `whole`: the full input;
    `axes`: the tensor axes that hold h and w."""

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    whole: bool = False
    axes: tuple[int, int] = _NCHW


@dataclass(frozen=True)
class Blocked:
    """The field cannot be derived: `node` (op `op_type`) is in the way, for `reason`."""

    node: str
    op_type: str
    reason: str = ""


def receptive_fields(idx: GraphIndex, input_hw: tuple[int, int]) -> dict[str, Field | Blocked]:
    """Field (or the reason there is none) of every image-dependent tensor of `idx`."""
    whole = Field(tuple(input_hw), (1, 1), (0, 0), whole=True)
    fields: dict[str, Field | Blocked] = {idx.image: Field((1, 1), (1, 1), (0, 0))}
    for i, node in enumerate(idx.nodes):
        names = [t for t in idx.data_inputs(i) if t in fields]
        if not names or node.op_type in ("Shape", "Size"):
            continue
        ins = [fields[t] for t in names]
        blocked = next((f for f in ins if isinstance(f, Blocked)), None)
        if blocked is not None:
            out = blocked
        elif all(f.whole for f in ins):
            out = whole
        else:
            out = _through(idx, i, names, ins, whole)
        for t in node.output:
            if t:
                fields[t] = out
    return fields


def _through(idx: GraphIndex, i: int, names: list[str], ins: list[Field], whole: Field) -> Field | Blocked:
    node, op = idx.nodes[i], idx.nodes[i].op_type
    name = idx.names[i]
    if op in _POSITIONWISE:
        return _union(_without_gates(idx, i, names, ins), name, op, whole)
    if op == "Concat":
        axes = {f.axes for f in ins if not f.whole}
        if len(axes) != 1 or _axis(idx, i, node.input[0], default=None) in next(iter(axes)):
            return Blocked(name, op, "concatenation along a spatial axis")
        return _union(ins, name, op, whole)
    if len(ins) != 1 or idx.data_inputs(i)[0] != node.input[0]:
        if op == "MatMul" and len(ins) == 1 and idx.data_inputs(i)[0] == node.input[1]:
            return whole  # image data as the weight of a product: every position mixes
        return Blocked(name, op, "image data enters through a parameter input")
    f = ins[0]
    if f.whole:
        return whole
    if op in _WINDOWED or op == "Pad":
        if f.axes != _NCHW:
            return Blocked(name, op, f"spatial axes at {list(f.axes)}, not NCHW")
    if op in _WINDOWED:
        try:
            g = idx.geometry(i)
        except (ValueError, KeyError, TypeError) as exc:
            return Blocked(name, op, str(exc))
        eff = g.effective_kernel
        return Field(tuple(f.size[a] + (eff[a] - 1) * f.jump[a] for a in range(2)),
                     tuple(f.jump[a] * g.strides[a] for a in range(2)),
                     tuple(f.start[a] - g.pads[a] * f.jump[a] for a in range(2)))
    if op == "Pad":
        pads = pad_amounts(idx, i)
        if pads is None:
            return Blocked(name, op, "pads are not constant")
        mode = idx.attrs(i).get("mode", "constant")
        if mode != "constant":
            return Blocked(name, op, f"mode {mode!r}")
        return Field(f.size, f.jump, tuple(f.start[a] - pads[2 + a] * f.jump[a] for a in range(2)))
    if op == "Transpose":
        perm = idx.attrs(i).get("perm")
        if perm is None:
            rank = len(idx.shape(node.input[0]) or ())
            perm = list(range(rank))[::-1]
        perm = list(perm)
        if any(a >= len(perm) for a in f.axes):
            return whole
        return replace(f, axes=(perm.index(f.axes[0]), perm.index(f.axes[1])))
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        if _axis(idx, i, node.input[0], default=1 if idx.opset < 13 else -1) not in f.axes:
            return f
        return Blocked(name, op, "normalises across positions")
    if op == "LayerNormalization":
        rank = len(idx.shape(node.input[0]) or ())
        axis = _axis(idx, i, node.input[0], default=-1)
        if axis is not None and rank and all(a < axis for a in f.axes):
            return f
        return whole
    if op == "MatMul":
        rank = len(idx.shape(node.input[0]) or ())
        weight = idx.shape(node.input[1])
        if rank > 2 and idx.is_constant(node.input[1]) and weight is not None and len(weight) == 2 \
                and rank - 1 not in f.axes:
            return f  # a Linear on channels-last maps: positions stay apart
        return whole
    if op == "Split":
        if _axis(idx, i, node.input[0], default=0) in f.axes:
            return Blocked(name, op, "split along a spatial axis")
        return f
    if op == "Slice":
        return _sliced(idx, i, f, name)
    if op in _GLOBAL:
        return whole
    if op in _REDUCE:
        return _reduced(idx, i, f, whole)
    if op in _RESHAPING:
        a, b = idx.shape(node.input[0]), idx.shape(node.output[0])
        if a is not None and b is not None and len(a) == len(b) == 4 and a[1:] == b[1:]:
            return f
        # H, W the trailing axes on both sides (row-major: they keep their indices), e.g. the
        # channel shuffle [N, C, H, W] -> [N, g, C/g, H, W] -> ... -> [N, C, H, W]
        if (a is not None and b is not None and len(b) >= 3 and f.axes == (len(a) - 2, len(a) - 1)
                and all(isinstance(d, int) for d in (*a[-2:], *b[-2:])) and tuple(a[-2:]) == tuple(b[-2:])):
            return replace(f, axes=(len(b) - 2, len(b) - 1))
        return whole
    return Blocked(name, op, "not a known spatial op")


def _sliced(idx: GraphIndex, i: int, f: Field, name: str) -> Field | Blocked:
    """Slice (opset >= 10) over channels keeps the field; over H or W with step 1 it moves it."""
    node = idx.nodes[i]
    vals = [idx.constant(t) if k < len(node.input) and node.input[k] else None
            for k, t in enumerate(list(node.input) + [""] * (5 - len(node.input)))][1:5]
    starts, _, axes, steps = vals
    rank = len(idx.shape(node.input[0]) or ())
    if not rank or (len(node.input) > 3 and node.input[3] and axes is None):
        return Blocked(name, "Slice", "axes are not constant")
    if axes is not None and not {int(v) % rank for v in np.asarray(axes).ravel()} & set(f.axes):
        return f  # channels only (x.chunk(2, dim=1)): where it starts does not matter
    if starts is None:
        return Blocked(name, "Slice", "starts are not constant")
    starts = [int(v) for v in np.asarray(starts).ravel()]
    axes = list(range(len(starts))) if axes is None else [int(v) % rank for v in np.asarray(axes).ravel()]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).ravel()]
    start = list(f.start)
    for ax, s0, st in zip(axes, starts, steps):
        if ax in f.axes:
            if st != 1 or s0 < 0:
                return Blocked(name, "Slice", "a strided or negative slice along a spatial axis")
            a = f.axes.index(ax)
            start[a] += s0 * f.jump[a]
    return replace(f, start=tuple(start))


def _without_gates(idx: GraphIndex, i: int, names: list[str], ins: list[Field]) -> list[Field]:
    """`ins` less the whole-image inputs that are broadcast over the output's H and W."""
    out = idx.shape(idx.nodes[i].output[0])
    keep = [f for f in ins if not f.whole]
    if not keep or out is None or len(keep) == len(ins):
        return ins
    ax = keep[0].axes
    if any(a >= len(out) or not isinstance(out[a], int) or out[a] <= 1 for a in ax):
        return ins
    gates = []
    for t, f in zip(names, ins):
        s = idx.shape(t)
        if f.whole and s is not None and len(s) == len(out) and all(s[a] == 1 for a in ax):
            gates.append(f)
    return [f for f in ins if not any(f is g for g in gates)] if gates else ins


def _reduced(idx: GraphIndex, i: int, f: Field, whole: Field) -> Field:
    """A reduction over axes other than H and W keeps the field (axes renumbered if dropped)."""
    node, a = idx.nodes[i], idx.attrs(i)
    rank = len(idx.shape(node.input[0]) or ())
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = idx.constant(node.input[1])
        axes = None if value is None else [int(v) for v in np.asarray(value).ravel()]
    if axes is None or not rank:
        return whole
    axes = sorted(int(x) % rank for x in axes)
    if any(x in f.axes for x in axes):
        return whole
    if a.get("keepdims", 1):
        return f
    return replace(f, axes=tuple(h - sum(x < h for x in axes) for h in f.axes))


def _union(ins: list[Field], name: str, op: str, whole: Field) -> Field | Blocked:
    if any(f.whole for f in ins):
        return whole
    if len(ins) == 1:
        return ins[0]
    if len({f.jump for f in ins}) != 1:
        return Blocked(name, op, "inputs with different strides")
    if len({f.axes for f in ins}) != 1:
        return Blocked(name, op, "inputs in different layouts")
    start = tuple(min(f.start[a] for f in ins) for a in range(2))
    end = tuple(max(f.start[a] + f.size[a] for f in ins) for a in range(2))
    return Field(tuple(end[a] - start[a] for a in range(2)), ins[0].jump, start, axes=ins[0].axes)


def _axis(idx: GraphIndex, i: int, x: str, default: int | None) -> int | None:
    axis = idx.attrs(i).get("axis", default)
    shape = idx.shape(x)
    if axis is not None and axis < 0 and shape is not None:
        axis += len(shape)
    return axis


def pad_amounts(idx: GraphIndex, i: int) -> list[int] | None:
    """Pads of a Pad node on 4-D data as [n, c, h, w begins, n, c, h, w ends], or None if unknown."""
    node, a = idx.nodes[i], idx.attrs(i)
    if "pads" in a:
        pads = [int(p) for p in a["pads"]]
    else:
        value = idx.constant(node.input[1]) if len(node.input) > 1 else None
        if value is None:
            return None
        pads = [int(p) for p in np.asarray(value).ravel()]
    rank = 4
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        value = idx.constant(node.input[3])
        if value is None:
            return None
        axes = [int(ax) % rank for ax in np.asarray(value).ravel()]
    if len(pads) != 2 * len(axes):
        return None
    full = [0] * (2 * rank)
    for k, ax in enumerate(axes):
        full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
    return full
