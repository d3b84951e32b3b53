"""A layer's reverse plan compiled for the projector: the graph compiler's partition (ORT segments
between native unpools) as ONNX Runtime sessions, full-frame or windowed (chain plans by
`_window`, graph plans by `_graph_window`, each where possible and no dearer)."""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ..graph import Layer, Relu, ReversePlan
from ._graph_window import GraphWindows, graph_window_cost, graph_windows
from ._graphs import Stage, WindowPart, graph_stage_graph, graph_window_stage_graph, stage_graph
from ._window import Level, full_levels, window_cost, window_levels

# A graph part keeps several per-seed tensors alive at once (branches, gathered forward values).
# Measured on ResNet-18 layer3.1 (CPU, deconvnet): peak RSS grows by ~2.2x the largest per-seed
# tensor per extra seed; 6 here sized its seed batches at 3, a third slower than batches of 10-16.
_GRAPH_LIVE_TENSORS = 2
# Windowed graph plans (ResNet-18 layer3.1, CPU): peak RSS grows by ~4.5x the largest per-seed
# window per seed; counting 1 gives batches of ~23 seeds there (~300 MB), 1.2x as fast as ~11.
# Their windows are many small ops per part, so per-run overhead wants the larger batches.
_WINDOW_GRAPH_LIVE_TENSORS = 1


@dataclass(eq=False)
class CompiledPlan:
    """`stages` in order, each with its ORT session in `sessions`; `levels` the tensors of the
    pass (the first at the tap, the last at the image; for a graph plan just those two);
    `windowed` whether they are per-seed windows. A graph plan (`graph` True) has one stage per
    part of the plan's partition, with `stage_forward[k]` the forward tensors stage k reads."""

    layer: Layer
    mode: str
    windowed: bool
    levels: list[Level]
    stages: list
    sessions: list
    graph: bool = False
    stage_forward: list = field(default_factory=list)
    largest: int = 0

    @property
    def image_level(self) -> Level:
        return self.levels[-1]

    @property
    def seed_bytes(self) -> int:
        """Bytes of the float32 tensors of one seed held at once (sizes the seed batches)."""
        if self.graph:
            return 4 * self.largest * (_WINDOW_GRAPH_LIVE_TENSORS if self.windowed else _GRAPH_LIVE_TENSORS)
        return max(4 * lv.channels * (lv.size[0] * lv.size[1] if lv.spatial else 1) for lv in self.levels)


def choose_levels(plan: ReversePlan, windowed: bool) -> tuple[list[Level], bool]:
    """The pass's levels: windowed when asked for, possible and no dearer than the full frame."""
    full = full_levels(plan.steps)
    if not windowed:
        return full, False
    win = window_levels(plan.steps)
    if win is None or window_cost(plan.steps, win) > window_cost(plan.steps, full):
        return full, False
    _check_box(plan.layer, win[-1])
    return win, True


def compile_plan(plan: ReversePlan, mode: str, windowed: bool, session_factory) -> CompiledPlan:
    """Stages of `plan` in `mode`; `session_factory(proto)` opens an ORT session on the device."""
    if not plan.is_chain:
        gw = choose_graph_windows(plan, windowed)
        if gw is not None:
            return _compile_graph_windowed(plan, gw, mode, session_factory)
        return _compile_graph(plan, mode, session_factory)
    levels, windowed = choose_levels(plan, windowed)
    stages, start = [], 0
    for part in plan.partition():
        steps, i = part.steps, start + len(part.adjoints)
        masks = [] if mode == "deconvnet" else [(j, s.tensor) for j, s in enumerate(steps) if isinstance(s, Relu)]
        stage = Stage(steps, levels[start:i + 1], first=start == 0, windowed=windowed, unpool=part.unpool,
                      unpool_size=levels[i + 1].size if part.unpool is not None else None, masks=masks)
        stage.proto = stage_graph(stage, mode)
        stages.append(stage)
        start = i + 1
    return CompiledPlan(plan.layer, mode, windowed, levels, stages, [session_factory(s.proto) for s in stages])


def choose_graph_windows(plan: ReversePlan, windowed: bool) -> GraphWindows | None:
    """A graph plan's per-seed windows when asked for, possible, no dearer than the full frame
    and ending on the layer's receptive-field box; else None (full frame)."""
    if not windowed:
        return None
    gw = graph_windows(plan)
    if gw is None or graph_window_cost(plan, gw) > graph_window_cost(plan, None):
        return None
    layer, image = plan.layer, gw.windows.get(plan.image)
    if image is None or (image.size, image.jump, image.start) != \
            (tuple(layer.rf_size), tuple(layer.rf_stride), tuple(layer.rf_start)):
        return None
    return gw


def _compile_graph_windowed(plan: ReversePlan, gw: GraphWindows, mode: str, session_factory) -> CompiledPlan:
    tap = gw.windows[plan.layer.tensor]
    parts, stages = plan.partition(), []
    for k, part in enumerate(parts):
        if k == 0:
            ins = [tap]
        else:
            ins = [gw.windows[t] for t in part.inputs[:-1]] + [gw.unpooled[parts[k - 1].unpool]]
        size = gw.unpooled[part.unpool].size if part.unpool is not None else None
        stages.append(graph_window_stage_graph(WindowPart(part, k == 0, ins, size), gw, tap, mode))
    sizes = [lv.channels * lv.size[0] * lv.size[1] for lv in [*gw.windows.values(), *gw.contributions.values()]]
    return CompiledPlan(plan.layer, mode, True, [tap, gw.windows[plan.image]], stages,
                        [session_factory(s.proto) for s in stages], graph=True, largest=max(sizes))


def _compile_graph(plan: ReversePlan, mode: str, session_factory) -> CompiledPlan:
    layer = plan.layer
    spatial = layer.kind != "fc"
    tap = Level(layer.units, layer.map_shape if spatial else None, layer.map_shape if spatial else None)
    h, w = layer.input_hw
    image = Level(_image_channels(plan), (h, w), (h, w))
    parts = plan.partition()
    built = [graph_stage_graph(part, tap, k == 0, mode) for k, part in enumerate(parts)]
    shapes = [s for step in plan.steps for s in _step_shapes(step)]
    largest = max(prod(s) for s in shapes) if shapes else 1
    return CompiledPlan(layer, mode, False, [tap, image], parts, [session_factory(p) for p, _ in built],
                        graph=True, stage_forward=[f for _, f in built], largest=largest)


def _image_channels(plan: ReversePlan) -> int:
    for a in plan.adjoints:
        if plan.image in a.inputs:
            step = a.step
            if hasattr(step, "shapes"):
                return step.shapes[step.inputs.index(plan.image)][0]
            return step.out_shape[0]
    raise AssertionError("the plan never reaches the image")


def _step_shapes(step) -> list[tuple]:
    out = [step.in_shape, step.out_shape]
    out += [s for s in getattr(step, "shapes", ()) if s is not None]
    out += [s for s in getattr(step, "out_shapes", ()) if s is not None]
    return out


def _check_box(layer: Layer, image: Level) -> None:
    """The image-level window must be the layer's receptive-field box (the graph compiler's R)."""
    got = (image.size, image.jump, image.start)
    want = (tuple(layer.rf_size), tuple(layer.rf_stride), tuple(layer.rf_start))
    if got != want:
        raise AssertionError(f"layer {layer.name}: projection window (size, jump, start) {got} differs "
                             f"from its receptive field {want}")
