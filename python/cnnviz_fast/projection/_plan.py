"""A layer's reverse plan cut into stages (ORT sessions between native unpools), full-frame or windowed."""
from __future__ import annotations

from dataclasses import dataclass

from ..graph import Layer, Relu, ReversePlan, Unpool
from ._graphs import Stage, stage_graph
from ._window import Level, full_levels, window_cost, window_levels


@dataclass(eq=False)
class CompiledPlan:
    """`stages` in order, each with its ORT session in `sessions`; `levels` all tensors of the pass
    (the first at the tap, the last at the image); `windowed` whether they are per-seed windows."""

    layer: Layer
    mode: str
    windowed: bool
    levels: list[Level]
    stages: list[Stage]
    sessions: list

    @property
    def image_level(self) -> Level:
        return self.levels[-1]

    @property
    def seed_bytes(self) -> int:
        """Bytes of the largest float32 tensor of one seed (sizes the seed batches)."""
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
    levels, windowed = choose_levels(plan, windowed)
    stages, start = [], 0
    for i, step in enumerate(plan.steps + [None]):
        if step is not None and not isinstance(step, Unpool):
            continue
        steps = plan.steps[start:i]
        masks = [] if mode == "deconvnet" else [(j, s.tensor) for j, s in enumerate(steps) if isinstance(s, Relu)]
        stage = Stage(steps, levels[start:i + 1], first=start == 0, windowed=windowed, unpool=step,
                      unpool_size=levels[i + 1].size if step is not None else None, masks=masks)
        stage.proto = stage_graph(stage, mode)
        stages.append(stage)
        start = i + 1
    return CompiledPlan(plan.layer, mode, windowed, levels, stages, [session_factory(s.proto) for s in stages])


def _check_box(layer: Layer, image: Level) -> None:
    """The image-level window must be the layer's receptive-field box (the graph compiler's R)."""
    got = (image.size, image.jump, image.start)
    want = (tuple(layer.rf_size), tuple(layer.rf_stride), tuple(layer.rf_start))
    if got != want:
        raise AssertionError(f"layer {layer.name}: projection window (size, jump, start) {got} differs "
                             f"from its receptive field {want}")
