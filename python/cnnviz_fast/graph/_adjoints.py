"""ONNX forms of the `Local` steps: each node's vector-Jacobian product, built with `_onnx.Builder`.

`emit_local(b, step, signals, mode, fwd)` takes the signal of each of the node's outputs (None
where none arrives) and returns one signal per image-dependent input (in input order). `fwd(t)`
names forward tensor t gathered per seed ([S, ...], one row per seed's image).

Relu-like Clip (min 0, ReLU6) takes the mode's rule as a whole, as Relu does: deconvnet relu(g);
guided relu(g)·[0 < x < max]; gradient g·[0 < x < max] (its true gradient). Every other op takes
its true local adjoint at the forward values, in every mode.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from . import _steps as S
from ._onnx import Builder


def emit_local(b: Builder, step: S.Local, signals: list, mode: str, fwd) -> list:
    op = step.op_type
    if op == "Split":
        return [_split(b, step, signals)]
    g = signals[0]
    n_data = sum(step.data)
    if g is None:
        return [None] * n_data
    e = _Emit(b, step, g, fwd)
    if op in _RULES:
        return _RULES[op](e)
    if op == "Clip":
        return [_clip(e, mode)]
    return [b.node("Mul", [g, _derivative(e)])]


class _Emit:
    def __init__(self, b: Builder, step: S.Local, g: str, fwd):
        self.b, self.step, self.g, self.fwd = b, step, g, fwd
        self.x = fwd(step.forward[0]) if step.forward else None

    def f(self, v) -> str:
        return self.b.const(np.asarray(v, np.float32))

    def i64(self, v) -> str:
        return self.b.const(np.asarray(v, np.int64))

    def n(self, op: str, *inputs: str, **attrs) -> str:
        return self.b.node(op, list(inputs), **attrs)

    def value(self, k: int) -> str:
        """Input k's forward value: gathered when image-dependent, else its constant."""
        s = self.step
        return self.fwd(s.inputs[k]) if s.data[k] else self.f(s.constants[k])

    def unbroadcast(self, g: str, k: int) -> str:
        """Sum g over the axes input k was broadcast along."""
        out, shape = self.step.in_shape, self.step.shapes[k]
        axes = [a + 1 for a, (o, i) in enumerate(zip(out, shape)) if i == 1 and o != 1]
        return self.n("ReduceSum", g, self.i64(axes), keepdims=1) if axes else g


def _add(e: _Emit) -> list:
    out = []
    for k, d in enumerate(e.step.data):
        if d:
            g = e.unbroadcast(e.g, k)
            out.append(e.n("Neg", g) if e.step.op_type == "Sub" and k == 1 else g)
    return out


def _mul(e: _Emit) -> list:
    return [e.unbroadcast(e.n("Mul", e.g, e.value(1 - k)), k) for k, d in enumerate(e.step.data[:2]) if d]


def _div(e: _Emit) -> list:
    out, b_val = [], e.value(1)
    if e.step.data[0]:
        out.append(e.unbroadcast(e.n("Div", e.g, b_val), 0))
    if e.step.data[1]:
        q = e.n("Div", e.n("Mul", e.g, e.value(0)), e.n("Mul", b_val, b_val))
        out.append(e.unbroadcast(e.n("Neg", q), 1))
    return out


def _concat(e: _Emit) -> list:
    x = e.step.extra
    parts = e.b.nodes_multi("Split", [e.g, e.i64(x["sizes"])], len(x["sizes"]), axis=x["axis"])
    return [p for p, d in zip(parts, e.step.data) if d]


def _split(b: Builder, step: S.Local, signals: list) -> str | None:
    ref = next((s for s in signals if s is not None), None)
    if ref is None:
        return None
    parts = [s if s is not None else _zeros(b, ref, shape) for s, shape in zip(signals, step.out_shapes)]
    return b.node("Concat", parts, axis=step.extra["axis"])


def _zeros(b: Builder, ref: str, shape: tuple) -> str:
    batch = b.node("Shape", [ref], start=0, end=1)
    dims = b.node("Concat", [batch, b.const(np.asarray(shape, np.int64))], axis=0)
    return b.node("ConstantOfShape", [dims], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))


def _slice(e: _Emit) -> list:
    pads = e.step.extra["pads"]
    half = len(pads) // 2
    return [e.n("Pad", e.g, e.i64([0, *pads[:half], 0, *pads[half:]]))]


def _reduce(e: _Emit) -> list:
    x = e.step.extra
    g = e.n("Reshape", e.g, e.i64([0, *x["keep"]]))
    g = e.n("Expand", g, e.i64([1, *e.step.shapes[0]]))
    return [e.n("Mul", g, e.f(1.0 / x["count"])) if x["count"] != 1 else g]


def _global_max(e: _Emit) -> list:
    c, h, w = e.step.shapes[0]
    first = e.n("ArgMax", e.n("Reshape", e.x, e.i64([0, 0, -1])), axis=2, keepdims=1, select_last_index=0)
    hot = e.n("Cast", e.n("Equal", first, e.i64(np.arange(h * w))), to=TensorProto.FLOAT)
    spread = e.n("Mul", hot, e.n("Reshape", e.g, e.i64([0, 0, 1])))
    return [e.n("Reshape", spread, e.i64([0, c, h, w]))]


def _resize(e: _Emit) -> list:
    x = e.step.extra
    t = e.n("MatMul", e.g, e.f(x["cols"]))
    return [e.n("MatMul", e.f(np.ascontiguousarray(x["rows"].T)), t)]


def _norm(e: _Emit) -> list:
    x = e.step.extra
    axes = x["axes"]

    def mean(t):
        return e.n("ReduceMean", t, axes=axes, keepdims=1)

    d = e.n("Sub", e.x, mean(e.x))
    inv = e.n("Reciprocal", e.n("Sqrt", e.n("Add", mean(e.n("Mul", d, d)), e.f(x["epsilon"]))))
    xh = e.n("Mul", d, inv)
    gh = e.n("Mul", e.g, e.f(x["scale"]))
    centred = e.n("Sub", e.n("Sub", gh, mean(gh)), e.n("Mul", xh, mean(e.n("Mul", gh, xh))))
    return [e.n("Mul", inv, centred)]


def _clip(e: _Emit, mode: str) -> str:
    x, zero = e.step.extra, e.f(0.0)
    if not x["relu"]:
        keep = None
        for bound, op in ((x["min"], "Greater"), (x["max"], "Less")):
            if bound is not None:
                m = e.n(op, e.x, e.f(bound))
                keep = m if keep is None else e.n("And", keep, m)
        return e.g if keep is None else e.n("Where", keep, e.g, zero)
    g = e.n("Relu", e.g) if mode in ("deconvnet", "guided") else e.g
    if mode == "deconvnet":
        return g
    y = e.fwd(x["mask"])  # the forward output (see _local._clip)
    keep = e.n("Greater", y, zero)
    if x["max"] is not None:
        keep = e.n("And", keep, e.n("Less", y, e.f(x["max"])))
    return e.n("Where", keep, g, zero)


def _derivative(e: _Emit) -> str:
    """d(output)/d(input) at the forward values, for the one-input elementwise ops."""
    op, x, a, n, f = e.step.op_type, e.x, e.step.attrs, e.n, e.f
    one = f(1.0)
    if op == "Sigmoid":
        return n("Mul", x, n("Sub", one, x))
    if op == "Tanh":
        return n("Sub", one, n("Mul", x, x))
    if op == "Exp":
        return x
    if op == "Sqrt":
        return n("Div", f(0.5), x)
    if op == "Reciprocal":
        return n("Neg", n("Mul", x, x))
    if op == "HardSigmoid":
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        v = n("Add", n("Mul", x, f(alpha)), f(beta))
        inside = n("And", n("Greater", v, f(0.0)), n("Less", v, one))
        return n("Where", inside, f(alpha), f(0.0))
    if op == "HardSwish":
        inside = n("And", n("Greater", x, f(-3.0)), n("Less", x, f(3.0)))
        slope = n("Where", inside, n("Mul", x, f(1 / 6)), f(0.0))
        return n("Add", n("HardSigmoid", x, alpha=1 / 6, beta=0.5), slope)
    if op == "Erf":
        return n("Mul", f(2 / math.sqrt(math.pi)), n("Exp", n("Neg", n("Mul", x, x))))
    if op == "Gelu":
        return _gelu(e, a.get("approximate", "none"))
    if op == "Softplus":
        return n("Sigmoid", x)
    if op == "Mish":
        t = n("Tanh", n("Softplus", x))
        return n("Add", t, n("Mul", n("Mul", x, n("Sigmoid", x)), n("Sub", one, n("Mul", t, t))))
    if op == "Elu":
        return n("Where", n("Greater", x, f(0.0)), one, n("Mul", f(a.get("alpha", 1.0)), n("Exp", x)))
    if op == "LeakyRelu":
        return n("Where", n("Greater", x, f(0.0)), one, f(a.get("alpha", 0.01)))
    if op == "PRelu":
        return n("Where", n("Greater", x, f(0.0)), one, f(e.step.extra["slope"]))
    if op == "Log":
        return n("Reciprocal", x)
    if op == "Pow":
        p = e.step.extra["p"]
        return n("Mul", f(p), n("Pow", x, f(p - 1)))
    if op == "Abs":
        return n("Sign", x)
    if op == "Softsign":
        d = n("Add", one, n("Abs", x))
        return n("Reciprocal", n("Mul", d, d))
    raise TypeError(f"no adjoint for {op}")


def _gelu(e: _Emit, approximate: str) -> str:
    x, n, f = e.x, e.n, e.f
    if approximate == "tanh":
        k, c = math.sqrt(2 / math.pi), 0.044715
        x2 = n("Mul", x, x)
        t = n("Tanh", n("Mul", f(k), n("Add", x, n("Mul", f(c), n("Mul", x2, x)))))
        dt = n("Mul", n("Sub", f(1.0), n("Mul", t, t)), n("Mul", f(k), n("Add", f(1.0), n("Mul", f(3 * c), x2))))
        return n("Add", n("Mul", f(0.5), n("Add", f(1.0), t)), n("Mul", n("Mul", f(0.5), x), dt))
    cdf = n("Mul", f(0.5), n("Add", f(1.0), n("Erf", n("Mul", x, f(1 / math.sqrt(2))))))
    pdf = n("Mul", f(1 / math.sqrt(2 * math.pi)), n("Exp", n("Mul", n("Mul", x, x), f(-0.5))))
    return n("Add", cdf, n("Mul", x, pdf))


_RULES = {"Add": _add, "Sub": _add, "Sum": _add, "Mul": _mul, "Div": _div, "Concat": _concat,
          "Slice": _slice, "Transpose": lambda e: [e.n("Transpose", e.g, perm=e.step.extra["inverse"])],
          "ReduceMean": _reduce, "ReduceSum": _reduce, "GlobalMaxPool": _global_max,
          "Resize": _resize, "Upsample": _resize, "Neg": lambda e: [e.n("Neg", e.g)],
          "LayerNormalization": _norm, "InstanceNormalization": _norm}
