"""The ONNX models the projector runs besides the forward graph.

- `prep_graph`: a forward tensor [N, C, H, W] as rows [N*H*W + 1, C] (channels last), the extra
  last row holding a fill value (0, or switch 255 = "no window"). Any per-seed window is then one
  Gather of row indices, with positions off the map pointing at the fill row.
- `stage_graph`: one stage of a reverse pass: the seed (first stage) or the incoming signal, the
  per-seed gathers of ReLU masks, the steps, and the gathered switches of the Unpool that follows.
  Full-frame stages inline the graph compiler's segment (`build_segment`); windowed stages emit the
  same ops on windows: ConvTranspose without pads, then zero what lies off the map.
- `graph_stage_graph`: one part of a graph plan, full frame: the seed (first part) or the incoming
  partial signals, the forward values gathered per seed image, the adjoints, and the outgoing partial
  signals (and the gathered switches of the unpool that follows).
- `graph_window_stage_graph`: one part of a graph plan on per-seed windows (`_graph_window`): each
  signal on its tensor's window, contributions padded into it before they are summed, stride-1
  ConvTs as Conv (`_convt`), ConvT outputs zeroed off the map.
- `regrid_graph`: per-seed windows of a result (crop to the box, or paste the box into the frame).
All are built with the graph compiler's one ONNX builder (`cnnviz_fast.graph.Builder`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import (AvgPoolT, Builder as _Builder, ConvT, Identity, Local, Part, Relu, Scale, Step, Unpool,
                     build_segment, emit_adjoints)
from ._convt import emit_conv_transpose
from ._graph_window import offsets
from ._window import Level

_NHWC_TO_NCHW = [0, 3, 1, 2]


@dataclass(eq=False)
class Stage:
    """Steps run by one ONNX Runtime session, then (optionally) one native unpool.

    `levels` are the tensors before each step and after the last; `first`: the stage makes the
    seed from the tapped tensor; `masks`: (level, forward ReLU tensor) gathered per seed in guided /
    gradient mode, in step order; `unpool`: the native step that follows, whose switches this
    stage gathers at its last level, and `unpool_size` the (h, w) it unpools to.
    """

    steps: list[Step]
    levels: list[Level]
    first: bool
    windowed: bool
    unpool: Unpool | None = None
    unpool_size: tuple[int, int] | None = None
    masks: list[tuple[int, str]] = field(default_factory=list)
    proto: onnx.ModelProto | None = None

    @property
    def gather_levels(self) -> list[int]:
        """Stage levels whose per-seed row index the stage takes as input `idx{level}`."""
        wanted = {j for j, _ in self.masks}
        if self.unpool is not None:
            wanted.add(len(self.steps))
        return sorted(wanted)

    @property
    def valid_levels(self) -> list[int]:
        """Windowed levels after a ConvT, zeroed off the map with inputs `rows{j}` / `cols{j}`."""
        if not self.windowed:
            return []
        return [j + 1 for j, s in enumerate(self.steps) if isinstance(s, ConvT)]


def prep_graph(channels: int, spatial: bool, dtype: int, fill) -> onnx.ModelProto:
    """x [N, C, H, W] (or [N, C]) -> y [N*H*W + 1, C], channels last, last row = `fill`."""
    b = _Builder()
    x = b.input("x", dtype, ["N", channels, "H", "W"] if spatial else ["N", channels])
    if spatial:
        x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    rows = b.node("Reshape", [x, b.const(np.array([-1, channels], np.int64))])
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    b.node("Concat", [rows, b.const(np.full((1, channels), fill, np_type))], "y", axis=0)
    return b.model([("y", dtype)], "cnnviz_projection")


def regrid_graph(channels: int) -> onnx.ModelProto:
    """x [S, C, h, w], idx [S, h2, w2] (rows of x flattened per seed, S*h*w = zero) -> [S, C, h2, w2]."""
    b = _Builder()
    x = b.input("x", TensorProto.FLOAT, ["S", channels, "h", "w"])
    idx = b.input("idx", TensorProto.INT64, ["S", "h2", "w2"])
    rows = b.node("Reshape", [b.node("Transpose", [x], perm=[0, 2, 3, 1]),
                              b.const(np.array([-1, channels], np.int64))])
    rows = b.node("Concat", [rows, b.const(np.zeros((1, channels), np.float32))], axis=0)
    b.node("Transpose", [b.node("Gather", [rows, idx], axis=0)], "y", perm=_NHWC_TO_NCHW)
    return b.model([("y", TensorProto.FLOAT)], "cnnviz_projection")


def stage_graph(stage: Stage, mode: str) -> onnx.ModelProto:
    """The ONNX model of `stage`; inputs as described in `Stage`, outputs "y" (and "sw")."""
    b = _Builder()
    lv = stage.levels
    x = _seed(b, lv[0]) if stage.first else b.input("x", TensorProto.FLOAT, _dims(lv[0]))
    index = {j: b.input(f"idx{j}", TensorProto.INT64, _index_dims(lv[j])) for j in stage.gather_levels}
    masks = []
    for k, (j, _) in enumerate(stage.masks):
        src = b.input(f"src{k}", TensorProto.FLOAT, ["M", lv[j].channels])
        masks.append(_gather(b, src, index[j], lv[j]))
    if stage.windowed:
        y = _window_body(b, stage, x, masks, mode)
    else:
        y = _inline_segment(b, stage.steps, x, masks, mode)
    b.node("Identity", [y], "y")
    outputs = [("y", TensorProto.FLOAT)]
    if stage.unpool is not None:
        last = len(stage.steps)
        src = b.input("sw_src", TensorProto.UINT8, ["M", lv[last].channels])
        b.node("Identity", [_gather(b, src, index[last], lv[last])], "sw")
        outputs.append(("sw", TensorProto.UINT8))
    return b.model(outputs, "cnnviz_projection")


def _dims(level: Level) -> list:
    return ["S", level.channels, *level.size] if level.spatial else ["S", level.channels]


def _index_dims(level: Level) -> list:
    return ["S", *level.size] if level.spatial else ["S"]


def _seed(b: _Builder, level: Level) -> str:
    """The seed map: zero except each seed's activation value at (c, y, x) of its image.

    Inputs: "tap" (the forward tensor, all images), "seed_at" [S, rank] (n, c, y, x),
    "onehot" [S, C, 1, 1] (1 at the seed's channel) and, for a full map, "where" [S, 1, H, W].
    """
    spatial = level.spatial
    tap = b.input("tap", TensorProto.FLOAT, ["N", level.channels, "H", "W"] if spatial else ["N", level.channels])
    at = b.input("seed_at", TensorProto.INT64, ["S", 4 if spatial else 2])
    onehot = b.input("onehot", TensorProto.FLOAT, ["S", level.channels, 1, 1] if spatial else ["S", level.channels])
    value = b.node("GatherND", [tap, at])
    value = b.node("Reshape", [value, b.const(np.array([-1, 1, 1, 1] if spatial else [-1, 1], np.int64))])
    x = b.node("Mul", [value, onehot])
    if spatial and level.size != (1, 1):
        x = b.node("Mul", [x, b.input("where", TensorProto.FLOAT, ["S", 1, *level.size])])
    return x


def _gather(b: _Builder, src: str, idx: str, level: Level) -> str:
    rows = b.node("Gather", [src, idx], axis=0)
    return b.node("Transpose", [rows], perm=_NHWC_TO_NCHW) if level.spatial else rows


def _relu(b: _Builder, x: str, mode: str, mask: str | None) -> str:
    if mode == "deconvnet":
        return b.node("Relu", [x])
    keep = b.node("Greater", [mask, b.const(np.zeros((), np.float32))])
    signal = b.node("Relu", [x]) if mode == "guided" else x
    return b.node("Where", [keep, signal, b.const(np.zeros((), np.float32))])


def _window_body(b: _Builder, stage: Stage, x: str, masks: list[str], mode: str) -> str:
    relus = iter(masks)
    for j, step in enumerate(stage.steps):
        if isinstance(step, Relu):
            x = _relu(b, x, mode, next(relus, None))
        elif isinstance(step, ConvT):
            # No pads: the window already starts where the forward padding would; what lands
            # off the map (the forward op read padding there) is zeroed right after.
            x = b.node("ConvTranspose", [x, b.const(step.weight)], strides=list(step.strides),
                       dilations=list(step.dilations), group=int(step.group), pads=[0, 0, 0, 0])
            level = stage.levels[j + 1]
            rows = b.input(f"rows{j + 1}", TensorProto.FLOAT, ["S", 1, level.size[0], 1])
            cols = b.input(f"cols{j + 1}", TensorProto.FLOAT, ["S", 1, 1, level.size[1]])
            x = b.node("Mul", [b.node("Mul", [x, rows]), cols])
        elif isinstance(step, Scale):
            x = b.node("Mul", [x, b.const(step.factor.astype(np.float32))])
        elif not isinstance(step, (Identity, AvgPoolT)):
            raise TypeError(f"step {type(step).__name__} cannot run in a window")
    return x


def _inline_segment(b: _Builder, steps: list[Step], x: str, masks: list[str], mode: str) -> str:
    """Copy the graph compiler's segment for `steps` into `b`, wired to `x` and the masks."""
    if all(isinstance(s, Identity) or (isinstance(s, AvgPoolT) and s.is_identity) for s in steps):
        return x
    seg = build_segment(steps, mode)
    prefix = b.fresh("seg") + "/"
    names = {"x": x, **{name: masks[k] for k, (name, _) in enumerate(seg.mask_inputs)}}

    def rename(t: str) -> str:
        return names.get(t, prefix + t) if t else t

    for init in seg.proto.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = rename(init.name)
        b.inits.append(copy)
    for node in seg.proto.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [rename(t) for t in node.input]
        copy.output[:] = [rename(t) for t in node.output]
        b.nodes.append(copy)
    return rename(seg.output)


def graph_stage_graph(part: Part, tap: Level, first: bool, mode: str) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX model of one `part` of a graph plan, and the forward tensors it reads (inputs
    "f0", "f1", ... [N, ...], gathered with "seed_n" [S], each seed's image).

    Inputs: the seed's ("tap", "seed_at", "onehot", "where" as in `_seed`) when `first`, else
    "in0", "in1", ... the partial signals of `part.inputs`; with an unpool, "sw_src" [N, C, OH, OW]
    uint8 (the MaxPool's switches). Outputs: "out0", ... the partial signals of `part.outputs`
    (with an unpool the last is the MaxPool output's signal), then "sw" (that seed's switches).
    """
    b = _Builder()
    signals: dict[str, list[str]] = {}
    if first:
        signals[part.inputs[0]] = [_seed(b, tap)]
    else:
        for j, t in enumerate(part.inputs):
            signals.setdefault(t, []).append(b.input(f"in{j}", TensorProto.FLOAT, None))
    forward: list[str] = []
    gathered: dict[str, str] = {}
    seed_n: list[str] = []

    def fwd(t: str) -> str:
        if t not in gathered:
            if not seed_n:
                seed_n.append(b.input("seed_n", TensorProto.INT64, ["S"]))
            src = b.input(f"f{len(forward)}", TensorProto.FLOAT, None)
            forward.append(t)
            gathered[t] = b.node("Gather", [src, seed_n[0]], axis=0)
        return gathered[t]

    emit_adjoints(b, part.adjoints, signals, mode, fwd)
    outputs = []
    for j, t in enumerate(part.outputs):
        parts = signals.pop(t, None)
        if not parts:
            raise AssertionError(f"no signal reaches tensor {t!r}")
        total = parts[0] if len(parts) == 1 else b.node("Sum", parts)
        outputs.append((b.node("Identity", [total], f"out{j}"), TensorProto.FLOAT))
    if part.unpool is not None:
        if not seed_n:
            seed_n.append(b.input("seed_n", TensorProto.INT64, ["S"]))
        src = b.input("sw_src", TensorProto.UINT8, None)
        outputs.append((b.node("Gather", [src, seed_n[0]], "sw", axis=0), TensorProto.UINT8))
    return b.model(outputs, "cnnviz_projection"), forward


@dataclass(eq=False)
class WindowPart:
    """One part of a windowed graph plan (see `_graph_window`): its ONNX model and what to feed it.

    Inputs besides the seed's (`first`) or "in0", ... (the part's incoming signals, each in the
    window `in_windows[j]`): `index` (input name, window) row indices into channels-last forward
    tensors (`_window.window_index`); `valid` (suffix, window): "rows<suffix>" / "cols<suffix>",
    1 where a ConvT's output window lies on the map; `sources` (input name, forward tensor) the
    channels-last ReLU outputs that guided / gradient masks gather; "sw_src" (channels-last
    switches, fill 255) when `unpool` follows, which then unpools to `unpool_size`.
    """

    part: Part
    first: bool
    in_windows: list
    unpool_size: tuple[int, int] | None = None
    proto: onnx.ModelProto | None = None
    index: list = field(default_factory=list)
    valid: list = field(default_factory=list)
    sources: list = field(default_factory=list)

    @property
    def unpool(self) -> Unpool | None:
        return self.part.unpool


def graph_window_stage_graph(wp: WindowPart, gw, tap: Level, mode: str) -> WindowPart:
    """Fill in `wp.proto` (and its feed lists): the part's adjoints on per-seed windows `gw`
    (`_graph_window.GraphWindows`). Outputs "out0", ... the partial signals of `part.outputs`,
    each in its tensor's window, then "sw" with an unpool. Each contribution is padded into its
    tensor's window before signals are summed, in the order the full-frame part sums them."""
    part = wp.part
    b = _Builder()
    indices: dict[Level, str] = {}
    sources: dict[str, str] = {}

    def index(level: Level) -> str:
        if level not in indices:
            indices[level] = b.input(f"idx{len(indices)}", TensorProto.INT64, _index_dims(level))
            wp.index.append((indices[level], level))
        return indices[level]

    def source(tensor: str, channels: int) -> str:
        if tensor not in sources:
            sources[tensor] = b.input(f"src{len(sources)}", TensorProto.FLOAT, ["M", channels])
            wp.sources.append((sources[tensor], tensor))
        return sources[tensor]

    # A ConvT's output still to be zeroed off the map travels as (signal, mask): a Relu right
    # after it runs first (relu(y) * m == relu(y * m) for a 0/1 mask m), the Mul after.
    signals: dict[str, list] = {}
    if wp.first:
        signals[part.inputs[0]] = [_seed(b, tap)]
    else:
        for j, (t, level) in enumerate(zip(part.inputs, wp.in_windows)):
            x = b.input(f"in{j}", TensorProto.FLOAT, _dims(level))
            signals.setdefault(t, []).append(_place(b, x, level, gw.windows[t]))
    for a in part.adjoints:
        out = a.outputs[0]
        got_in = signals.pop(out, [])
        if not got_in:
            continue
        cur, step = gw.windows[out], a.step
        if isinstance(step, Relu):
            mask = None
            if mode != "deconvnet":
                mask = _gather(b, source(step.tensor, cur.channels), index(cur), cur)
            if len(got_in) == 1 and isinstance(got_in[0], tuple):
                y, valid = got_in[0]
                got = [(_relu(b, y, mode, mask), valid)]
            else:
                got = [_relu(b, _total(b, got_in), mode, mask)]
        else:
            g = _total(b, got_in)
            if isinstance(step, ConvT):
                y = emit_conv_transpose(b, g, step.weight, step.strides, step.dilations, step.group, cur.size)
                level = gw.contributions[(a, 0)]
                name = f"valid{len(wp.valid)}"
                wp.valid.append((name, level))
                got = [(y, b.input(name, TensorProto.FLOAT, ["S", 1, *level.size]))]
            elif isinstance(step, Scale):
                got = [b.node("Mul", [g, b.const(step.factor.astype(np.float32))])]
            elif isinstance(step, (Identity, AvgPoolT)):
                got = [g]
            elif isinstance(step, Local) and step.op_type in ("Add", "Sub", "Sum"):
                got = [b.node("Neg", [g]) if step.op_type == "Sub" and k == 1 else g
                       for k, d in enumerate(step.data) if d]
            else:
                raise TypeError(f"step {step.op_type} cannot run in a window")
        for k, (t, signal) in enumerate(zip(a.inputs, got)):
            inner, outer = gw.contributions[(a, k)], gw.windows[t]
            if isinstance(signal, tuple) and inner != outer:
                signal = _masked(b, signal)
            signals.setdefault(t, []).append(_place(b, signal, inner, outer))
    outputs = []
    for j, t in enumerate(part.outputs):
        total = _total(b, signals.pop(t, []))
        if total is None:
            raise AssertionError(f"no signal reaches tensor {t!r}")
        outputs.append((b.node("Identity", [total], f"out{j}"), TensorProto.FLOAT))
    u = part.unpool
    if u is not None:
        level = gw.windows[u.output_tensor]
        src = b.input("sw_src", TensorProto.UINT8, ["M", level.channels])
        outputs.append((b.node("Identity", [_gather(b, src, index(level), level)], "sw"), TensorProto.UINT8))
    wp.proto = b.model(outputs, "cnnviz_projection")
    return wp


def _total(b: _Builder, parts: list) -> str | None:
    if not parts:
        return None
    parts = [_masked(b, p) for p in parts]
    return parts[0] if len(parts) == 1 else b.node("Sum", parts)


def _masked(b: _Builder, signal) -> str:
    """A (signal, 0/1 mask) pair as the masked signal; a plain signal as it is."""
    if isinstance(signal, tuple):
        return b.node("Mul", [signal[0], signal[1]])
    return signal


def _place(b: _Builder, x: str, inner: Level, outer: Level) -> str:
    """Signal `x` on window `inner` as one on the larger window `outer` of the same tensor."""
    if inner == outer:
        return x
    return b.node("Pad", [x, b.const(np.array(offsets(inner, outer), np.int64))])
