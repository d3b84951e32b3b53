"""Per-seed windows for graph (DAG) plans, the graph form of `_window.window_levels`.

In a chain every tensor's window follows from the one before it. In a graph a tensor may receive
signals from several consumers (a residual block's Add sends one down the convolutions and one
down the shortcut); each consumer's signal covers its own window (a "contribution"), and the
tensor's window is the bounding box of all of them. That box is again affine in the seed
position when every contribution has the same jump per axis (true in ResNets: both branches of a
block share their stride), so a contribution sits at a constant offset inside the box: it is
padded into it before the signals are summed. Walking the adjoints in plan order meets every
contribution to a tensor before the adjoint that reads its total, so one pass finds them all.

Steps that keep a window: Relu, Identity, a per-channel Scale, an identity AvgPoolT, and the
Local Add / Sub / Sum without broadcasting (each input receives the output's window). ConvT and
Unpool grow it as in a chain. Anything else (Concat, gates, LayerNorm, Gemm, ...) makes the plan
run full frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import AvgPoolT, ConvT, Identity, Local, Relu, ReversePlan, Scale, Unpool
from ._window import Level, _keeps_window

_SUMS = {"Add", "Sub", "Sum"}


@dataclass(eq=False)
class GraphWindows:
    """`windows[t]`: the window of tensor t's summed signal; `contributions[(adjoint, k)]`: the
    window of the signal `adjoint` sends to its k-th input (before padding into that input's
    window); `unpooled[step]`: the window an Unpool step writes (its input tensor's map)."""

    windows: dict[str, Level]
    contributions: dict[tuple, Level] = field(default_factory=dict)
    unpooled: dict[object, Level] = field(default_factory=dict)


def graph_windows(plan: ReversePlan) -> GraphWindows | None:
    """The windows of `plan`, or None when some step or some union cannot be windowed."""
    layer = plan.layer
    shape = tuple(layer.map_shape) if layer.kind != "fc" else ()
    if len(shape) != 2:
        return None
    tap = plan.layer.tensor
    gw = GraphWindows({tap: Level(layer.units, (1, 1), shape, (1, 1), (0, 0))})
    pending: dict[str, list[Level]] = {}
    for a in plan.adjoints:
        if len(a.outputs) != 1:
            return None
        out = a.outputs[0]
        if out in pending:
            got = _union(pending.pop(out))
            if got is None:
                return None
            gw.windows[out] = got
        elif out not in gw.windows:
            return None  # no signal reaches it
        cur = gw.windows[out]
        step = a.step
        made = _contributions(step, cur, len(a.inputs))
        if made is None:
            return None
        for k, (t, level) in enumerate(zip(a.inputs, made)):
            gw.contributions[(a, k)] = level
            pending.setdefault(t, []).append(level)
        if isinstance(step, Unpool):
            gw.unpooled[step] = made[0]
    for t, levels in pending.items():
        got = _union(levels)
        if got is None:
            return None
        gw.windows[t] = got
    return gw


def _contributions(step, cur: Level, inputs: int) -> list[Level] | None:
    out_shape = step.out_shape
    if len(out_shape) != 3 or len(step.in_shape) != 3:
        return None
    out_map = tuple(out_shape[1:])
    if isinstance(step, (ConvT, Unpool)):
        k = step.weight.shape[2:] if isinstance(step, ConvT) else step.kernel
        size = tuple((cur.size[a] - 1) * step.strides[a] + step.dilations[a] * (k[a] - 1) + 1 for a in range(2))
        jump = tuple(cur.jump[a] * step.strides[a] for a in range(2))
        start = tuple(cur.start[a] * step.strides[a] - step.pads[a] for a in range(2))
        return [Level(out_shape[0], size, out_map, jump, start)]
    if isinstance(step, Local):
        if step.op_type not in _SUMS or len(step.outputs) != 1:
            return None
        shapes = [s for s, d in zip(step.shapes, step.data) if d]
        if len(shapes) != inputs or any(tuple(s) != tuple(step.in_shape) for s in shapes):
            return None  # broadcasting: the signal is summed over axes, not windowed
        return [Level(cur.channels, cur.size, cur.map, cur.jump, cur.start)] * inputs
    if isinstance(step, (Relu, Identity, Scale, AvgPoolT)) and _keeps_window(step):
        return [Level(out_shape[0], cur.size, out_map, cur.jump, cur.start)]
    return None


def _union(levels: list[Level]) -> Level | None:
    """The bounding box of windows of one tensor (None when their jumps differ)."""
    if not levels:
        return None
    first = levels[0]
    if any(lv.jump != first.jump or lv.channels != first.channels or lv.map != first.map for lv in levels):
        return None
    start = tuple(min(lv.start[a] for lv in levels) for a in range(2))
    end = tuple(max(lv.start[a] + lv.size[a] for lv in levels) for a in range(2))
    return Level(first.channels, (end[0] - start[0], end[1] - start[1]), first.map, first.jump, start)


def offsets(inner: Level, outer: Level) -> list[int]:
    """ONNX Pad amounts [0, 0, top, left, 0, 0, bottom, right] placing window `inner` in `outer`."""
    top, left = (inner.start[a] - outer.start[a] for a in range(2))
    bottom, right = (outer.start[a] + outer.size[a] - inner.start[a] - inner.size[a] for a in range(2))
    assert min(top, left, bottom, right) >= 0 and inner.jump == outer.jump, (inner, outer)
    return [0, 0, top, left, 0, 0, bottom, right]


def graph_window_cost(plan: ReversePlan, gw: GraphWindows | None) -> int:
    """Multiply-adds of the plan's transposed convolutions per seed: in windows, or (gw None) on
    full maps."""
    total = 0
    for a in plan.adjoints:
        step = a.step
        if isinstance(step, ConvT):
            if gw is None:
                area = step.in_shape[1] * step.in_shape[2] if len(step.in_shape) == 3 else 1
            else:
                w = gw.windows[a.outputs[0]]
                area = w.size[0] * w.size[1]
            cin, cout_g, kh, kw = step.weight.shape
            total += cin * cout_g * kh * kw * area
    return total
