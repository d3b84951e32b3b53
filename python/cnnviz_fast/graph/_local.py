"""`Local` steps: the nodes of a graph plan that are not a chain step, checked and prepared here
(their ONNX form is in `_adjoints`).

- Linear ops with several inputs, or that move data around: Add / Sub / Sum (and Mul / Div by a
  constant that broadcasts), Concat, Split, Slice, Transpose, ReduceMean / ReduceSum, Resize /
  Upsample (separable interpolation read off ONNX Runtime's own forward), Neg — exact adjoints.
- Relu-like Clip (min 0, ReLU6): the mode's rule (see `_adjoints`); its mask tensor counts as a
  ReLU output (`ReversePlan.relu_tensors`).
- Everything else listed in `X_OPS` / `Y_OPS` and Mul / Div of two image-dependent tensors: the true
  local adjoint at the image's forward values (the node's input or output, `Local.forward`).
"""
from __future__ import annotations

import numpy as np

from . import _steps as S
from ._index import GraphIndex

LINEAR_OPS = {"Add", "Sub", "Sum", "Concat", "Split", "Slice", "Transpose", "ReduceMean", "ReduceSum",
              "Resize", "Upsample", "Neg"}
# Adjoints that read the forward input x ...
X_OPS = {"HardSigmoid", "HardSwish", "Erf", "Gelu", "Softplus", "Mish", "Elu", "LeakyRelu", "PRelu",
         "Log", "Pow", "Abs", "Softsign", "GlobalMaxPool", "LayerNormalization",
         "InstanceNormalization"}
# ... or the forward output y.
Y_OPS = {"Sigmoid", "Tanh", "Exp", "Sqrt", "Reciprocal"}
SUPPORTED = LINEAR_OPS | X_OPS | Y_OPS | {"Mul", "Div", "Clip"}


class Refuse(Exception):
    """Raised with the reason a node cannot be reversed (becomes an UnsupportedOp)."""


def shape_of(idx: GraphIndex, t: str) -> tuple[int, ...]:
    """Static shape of tensor `t` without its batch dimension."""
    s = idx.shape(t)
    if s is None or len(s) < 2 or not all(isinstance(d, int) for d in s[1:]):
        raise Refuse(f"tensor {t!r} has no static shape")
    return tuple(int(d) for d in s[1:])


def local_step(idx: GraphIndex, i: int) -> S.Local:
    node, op = idx.nodes[i], idx.nodes[i].op_type
    if op not in SUPPORTED:
        raise Refuse("no adjoint for this op")
    a = idx.attrs(i)
    inputs = tuple(node.input)
    data = tuple(bool(t) and t in idx.data for t in inputs)
    shapes = tuple(shape_of(idx, t) if d else None for t, d in zip(inputs, data))
    consts = {k: idx.constant(t) for k, (t, d) in enumerate(zip(inputs, data)) if t and not d}
    out_shapes = tuple(shape_of(idx, t) if t in idx.shapes else None for t in node.output)
    if out_shapes[0] is None:
        raise Refuse(f"tensor {node.output[0]!r} has no static shape")
    first = next(k for k, d in enumerate(data) if d)
    ctx = _Ctx(idx, i, op, a, inputs, data, shapes, consts, out_shapes)
    forward, extra = _PREPARE.get(op, _unary)(ctx)
    return S.Local(node=idx.names[i], op_type=op, in_shape=out_shapes[0], out_shape=shapes[first],
                   inputs=inputs, data=data, shapes=shapes, outputs=tuple(node.output),
                   out_shapes=out_shapes, attrs=a, constants=consts, forward=tuple(forward), extra=extra)


class _Ctx:
    def __init__(self, idx, i, op, a, inputs, data, shapes, consts, out_shapes):
        self.idx, self.i, self.op, self.a = idx, i, op, a
        self.inputs, self.data, self.shapes, self.consts, self.out_shapes = inputs, data, shapes, consts, out_shapes
        self.rank = len(out_shapes[0]) + 1

    def const(self, k: int, what: str) -> np.ndarray:
        v = self.consts.get(k)
        if v is None:
            raise Refuse(f"its {what} is not a constant")
        return v

    def optional_const(self, k: int):
        if k >= len(self.inputs) or not self.inputs[k]:
            return None
        return self.const(k, f"input {k}")

    def axis(self, axis: int, rank: int | None = None) -> int:
        rank = rank or self.rank
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise Refuse("it works along the batch dimension")
        return axis


def _broadcasting(ctx: _Ctx):
    """Add / Sub / Sum / Mul / Div: data inputs have the output's rank; constants must not vary
    along the batch. Mul / Div read the other operand (and Div's output-side values)."""
    for k, d in enumerate(ctx.data):
        if d and len(ctx.shapes[k]) != ctx.rank - 1:
            raise Refuse("an image-dependent input has a different rank than the output")
        if not d and ctx.inputs[k]:
            c = ctx.const(k, "other operand")
            if c.ndim == ctx.rank and c.shape[0] != 1:
                raise Refuse("the constant varies along the batch dimension")
    if ctx.op == "Mul" and all(ctx.data[:2]):
        return list(ctx.inputs[:2]), {}
    if ctx.op == "Div" and ctx.data[1]:
        return [ctx.inputs[1]] + ([ctx.inputs[0]] if ctx.data[0] else []), {}
    return [], {}


def _concat(ctx: _Ctx):
    axis = ctx.axis(int(ctx.a["axis"]))
    sizes = []
    for k, t in enumerate(ctx.inputs):
        shape = ctx.shapes[k] if ctx.data[k] else tuple(ctx.idx.shape(t) or ())[1:]
        if len(shape) != ctx.rank - 1 or not isinstance(shape[axis - 1], int):
            raise Refuse(f"input {t!r} has no static shape")
        sizes.append(int(shape[axis - 1]))
    return [], {"axis": axis, "sizes": sizes}


def _split(ctx: _Ctx):
    axis = ctx.axis(int(ctx.a.get("axis", 0)))
    if any(s is None for s in ctx.out_shapes):
        raise Refuse("an output has no static shape")
    return [], {"axis": axis, "sizes": [s[axis - 1] for s in ctx.out_shapes]}


def _slice(ctx: _Ctx):
    shape = (None, *ctx.shapes[0])
    rank = len(shape)
    if ctx.idx.opset < 10:
        starts, ends = ctx.a["starts"], ctx.a["ends"]
        axes, steps = ctx.a.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ctx.const(1, "starts"), ctx.const(2, "ends")
        axes = ctx.optional_const(3)
        steps = ctx.optional_const(4)
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
    begin, end = [0] * (rank - 1), [0] * (rank - 1)
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) + rank if int(axis) < 0 else int(axis)
        if axis == 0:
            raise Refuse("it slices the batch dimension")
        if int(step) != 1:
            raise Refuse("only Slice with step 1")
        lo, hi, _ = slice(int(start), int(stop), 1).indices(shape[axis])
        begin[axis - 1], end[axis - 1] = lo, shape[axis] - max(hi, lo)
    return [], {"pads": begin + end}


def _transpose(ctx: _Ctx):
    perm = list(ctx.a.get("perm", range(ctx.rank)[::-1]))
    if perm[0] != 0:
        raise Refuse("it moves the batch dimension")
    return [], {"inverse": [int(p) for p in np.argsort(perm)]}


def _reduce(ctx: _Ctx):
    if ctx.idx.opset >= 18 or (ctx.op == "ReduceSum" and ctx.idx.opset >= 13):
        axes = ctx.optional_const(1)
    else:
        axes = ctx.a.get("axes")
    in_rank = len(ctx.shapes[0]) + 1
    if axes is None or len(axes) == 0:
        if ctx.a.get("noop_with_empty_axes", 0):
            return [], {"keep": (None, *ctx.shapes[0]), "count": 1}
        raise Refuse("it reduces over the batch dimension")
    axes = sorted(ctx.axis(int(x), in_rank) for x in axes)
    keep = [1 if k in axes else d for k, d in enumerate((None, *ctx.shapes[0]))]
    count = int(np.prod([ctx.shapes[0][k - 1] for k in axes]))
    return [], {"keep": tuple(keep[1:]), "count": count if ctx.op == "ReduceMean" else 1}


def _resize(ctx: _Ctx):
    """Separable interpolation matrices (per axis, out x in) measured on ORT's forward."""
    shape = ctx.shapes[0]
    if len(shape) != 3 or ctx.out_shapes[0][0] != shape[0] or ctx.a.get("axes"):
        raise Refuse("only Resize of the two spatial axes of [N, C, H, W]")
    if ctx.a.get("antialias", 0):
        raise Refuse("antialiased Resize")
    (_, h, w), (_, oh, ow) = shape, ctx.out_shapes[0]
    mats = []
    for axis, n in ((0, h), (1, w)):
        probe = np.zeros((n, 1, h, w), np.float32)
        for k in range(n):
            if axis == 0:
                probe[k, 0, k, :] = 1
            else:
                probe[k, 0, :, k] = 1
        out = _run_resize(ctx, probe, (oh, ow))
        mats.append(out[:, 0, :, 0].T if axis == 0 else out[:, 0, 0, :].T)  # [out, in]
    lh, lw = mats
    test = np.random.default_rng(0).normal(size=(1, 1, h, w)).astype(np.float32)
    want = _run_resize(ctx, test, (oh, ow))[0, 0]
    if not np.allclose(lh @ test[0, 0] @ lw.T, want, atol=1e-5, rtol=1e-5):
        raise Refuse("the interpolation is not separable")
    return [], {"rows": lh.astype(np.float32), "cols": lw.astype(np.float32)}


def _run_resize(ctx: _Ctx, x: np.ndarray, out_hw) -> np.ndarray:
    from onnx import helper, numpy_helper

    from ._onnx import run_node

    names, inits = ["x"], []
    for k, t in enumerate(ctx.inputs[1:], start=1):
        if not t:
            names.append("")
            continue
        value = ctx.const(k, f"input {k}")
        if ctx.op == "Resize" and k == 3:  # sizes: the probe's own batch and channel count
            value = np.array([x.shape[0], 1, *out_hw], np.int64)
        elif value.ndim == 1 and value.size == 4 and (k == 2 or ctx.op == "Upsample"):
            if value[0] != 1 or value[1] != 1:
                raise Refuse("it scales the batch or channel dimension")
        names.append(f"in{k}")
        inits.append(numpy_helper.from_array(value, f"in{k}"))
    node = helper.make_node(ctx.op, names, ["y"], **ctx.a)
    return run_node(node, {"x": x}, ctx.idx.opset, inits)[0]


def _clip(ctx: _Ctx):
    if ctx.idx.opset >= 11:
        lo, hi = ctx.optional_const(1), ctx.optional_const(2)
    else:
        lo, hi = ctx.a.get("min"), ctx.a.get("max")
    lo = None if lo is None else float(np.asarray(lo))
    hi = None if hi is None else float(np.asarray(hi))
    if lo == 0.0:
        # ReLU-like: like a Relu's, its guided / gradient mask reads the output (y in (0, max)
        # exactly where x is); deconvnet reads nothing.
        return [], {"min": lo, "max": hi, "relu": True, "mask": ctx.idx.nodes[ctx.i].output[0]}
    return [ctx.inputs[0]], {"min": lo, "max": hi, "relu": False}


def _norm(ctx: _Ctx):
    scale = ctx.const(1, "scale")
    rank = ctx.rank
    if ctx.op == "LayerNormalization":
        axis = ctx.axis(int(ctx.a.get("axis", -1)))
        axes = list(range(axis, rank))
        scale = scale.reshape(scale.shape)
    else:  # InstanceNormalization: per (n, c) over the remaining axes
        axes = list(range(2, rank))
        scale = scale.reshape(-1, *([1] * (rank - 2)))
    if any(o for o in ctx.idx.nodes[ctx.i].output[1:]):
        raise Refuse("its mean / inverse standard deviation outputs are used")
    return [ctx.inputs[0]], {"axes": axes, "scale": scale.astype(np.float32),
                             "epsilon": float(ctx.a.get("epsilon", 1e-5))}


def _unary(ctx: _Ctx):
    if sum(ctx.data) != 1 or not ctx.data[0]:
        raise Refuse("the image data enters through a parameter input")
    if ctx.op == "PRelu":
        return [ctx.inputs[0]], {"slope": ctx.const(1, "slope").astype(np.float32)}
    if ctx.op == "Pow":
        p = ctx.const(1, "exponent")
        if p.size != 1:
            raise Refuse("only a scalar exponent")
        return [ctx.inputs[0]], {"p": float(p.reshape(()))}
    if ctx.op == "Neg":
        return [], {}
    if ctx.op == "GlobalMaxPool" and len(ctx.shapes[0]) != 3:
        raise Refuse("only [N, C, H, W] inputs")
    return [ctx.inputs[0] if ctx.op in X_OPS else ctx.idx.nodes[ctx.i].output[0]], {}


_PREPARE = {"Add": _broadcasting, "Sub": _broadcasting, "Sum": _broadcasting, "Mul": _broadcasting,
            "Div": _broadcasting, "Concat": _concat, "Split": _split, "Slice": _slice,
            "Transpose": _transpose, "ReduceMean": _reduce, "ReduceSum": _reduce, "Resize": _resize,
            "Upsample": _resize, "Clip": _clip, "LayerNormalization": _norm,
            "InstanceNormalization": _norm}
