"""Running a compiled plan: one reverse pass of a batch of seeds, stage by stage.

Chain plans: per seed batch the host builds only small index arrays: each level's window rows into
the channels-last forward tensors (`_window.window_index`), the off-map masks of windowed ConvT
outputs, and the seed's channel / position one-hots. Graph plans (full frame): the partial signals
of each part go to the next, the forward values are gathered by each seed's image inside the
parts. Windowed graph plans: the same hand-over, on windows, fed like chain windows (row indices
for switches and masks, one 0/1 on-map mask per ConvT output). Signals stay OrtValues on the
device throughout.
"""
from __future__ import annotations

import numpy as np

from ._device import Device
from ._forward import Forward
from ._plan import CompiledPlan
from ._window import window_index


def run_pass(dev: Device, fwd: Forward, plan: CompiledPlan, s: np.ndarray):
    """One reverse pass of seeds `s` (int64 [S, 4]) through the plan's stages -> the image-level
    OrtValue [S, C, h, w] (the whole image, or each seed's box when the plan is windowed)."""
    if plan.graph:
        return (_run_graph_windowed if plan.windowed else _run_graph)(dev, fwd, plan, s)
    n = s[:, 0]
    cache: dict = {}

    def index(level):
        if level not in cache:
            if not level.spatial:
                cache[level] = (n.copy(), None, None)
            else:
                top, left = level.origins(s[:, 2], s[:, 3])
                cache[level] = window_index(n, top, left, level.size, level.map, fwd.images)
        return cache[level]

    signal = None
    for stage, sess in zip(plan.stages, plan.sessions):
        feeds = _seed_feeds(plan, s, fwd) if stage.first else {"x": signal}
        for j in stage.gather_levels:
            feeds[f"idx{j}"] = index(stage.levels[j])[0]
        for k, (_, tensor) in enumerate(stage.masks):
            feeds[f"src{k}"] = fwd.source(tensor)
        for j in stage.valid_levels:
            _, rows, cols = index(stage.levels[j])
            feeds[f"rows{j}"] = rows.astype(np.float32)[:, None, :, None]
            feeds[f"cols{j}"] = cols.astype(np.float32)[:, None, None, :]
        u = stage.unpool
        if u is None:
            signal = dev.run(sess, feeds, ["y"])[0]
            continue
        feeds["sw_src"] = fwd.switches(u)
        y, sw = dev.run(sess, feeds, ["y", "sw"])
        if plan.windowed:
            signal = dev.unpool(y, sw, u.kernel, u.strides, (0, 0, 0, 0), u.dilations, stage.unpool_size)
        else:
            signal = dev.unpool(y, sw, u.kernel, u.strides, u.pads, u.dilations, u.out_shape[1:])
    return signal


def _run_graph(dev: Device, fwd: Forward, plan: CompiledPlan, s: np.ndarray):
    seed_n = np.ascontiguousarray(s[:, 0])
    state: list = []
    for k, (part, sess) in enumerate(zip(plan.stages, plan.sessions)):
        feeds = _seed_feeds(plan, s, fwd) if k == 0 else {f"in{j}": v for j, v in enumerate(state)}
        for j, tensor in enumerate(plan.stage_forward[k]):
            feeds[f"f{j}"] = fwd.values[tensor]
        u = part.unpool
        if plan.stage_forward[k] or u is not None:
            feeds["seed_n"] = seed_n
        names = [f"out{j}" for j in range(len(part.outputs))]
        if u is None:
            state = dev.run(sess, feeds, names)
            continue
        feeds["sw_src"] = fwd.raw_switches(u)
        *state, y, sw = dev.run(sess, feeds, names + ["sw"])
        state.append(dev.unpool(y, sw, u.kernel, u.strides, u.pads, u.dilations, u.out_shape[1:]))
    return state[0]


def _run_graph_windowed(dev: Device, fwd: Forward, plan: CompiledPlan, s: np.ndarray):
    n = s[:, 0]
    index_cache: dict = {}
    valid_cache: dict = {}

    def index(level):
        if level not in index_cache:
            top, left = level.origins(s[:, 2], s[:, 3])
            index_cache[level] = window_index(n, top, left, level.size, level.map, fwd.images)[0]
        return index_cache[level]

    def valid(level):
        if level not in valid_cache:
            top, left = level.origins(s[:, 2], s[:, 3])
            rows = top[:, None] + np.arange(level.size[0])[None, :]
            cols = left[:, None] + np.arange(level.size[1])[None, :]
            r = (rows >= 0) & (rows < level.map[0])
            c = (cols >= 0) & (cols < level.map[1])
            valid_cache[level] = (r[:, None, :, None] & c[:, None, None, :]).astype(np.float32)
        return valid_cache[level]

    state: list = []
    for wp, sess in zip(plan.stages, plan.sessions):
        feeds = _seed_feeds(plan, s, fwd) if wp.first else {f"in{j}": v for j, v in enumerate(state)}
        for name, level in wp.index:
            feeds[name] = index(level)
        for name, level in wp.valid:
            feeds[name] = valid(level)
        for name, tensor in wp.sources:
            feeds[name] = fwd.source(tensor)
        names = [f"out{j}" for j in range(len(wp.part.outputs))]
        u = wp.unpool
        if u is None:
            state = dev.run(sess, feeds, names)
            continue
        feeds["sw_src"] = fwd.switches(u)
        *state, y, sw = dev.run(sess, feeds, names + ["sw"])
        state.append(dev.unpool(y, sw, u.kernel, u.strides, (0, 0, 0, 0), u.dilations, wp.unpool_size))
    return state[0]


def _seed_feeds(plan: CompiledPlan, s: np.ndarray, fwd: Forward) -> dict:
    first = plan.levels[0]
    S = len(s)
    feeds = {"tap": fwd.values[plan.layer.tensor]}
    onehot = np.zeros((S, first.channels), np.float32)
    onehot[np.arange(S), s[:, 1]] = 1.0
    if first.spatial:
        feeds["seed_at"] = np.ascontiguousarray(s)
        feeds["onehot"] = onehot[:, :, None, None]
        if first.size != (1, 1):
            where = np.zeros((S, 1, *first.size), np.float32)
            where[np.arange(S), 0, s[:, 2], s[:, 3]] = 1.0
            feeds["where"] = where
    else:
        feeds["seed_at"] = np.ascontiguousarray(s[:, :2])
        feeds["onehot"] = onehot
    return feeds
