"""A tiny projector for the reverse-plan tests: a ReversePlan's segments run by ONNX Runtime, its
unpools by the NumPy reference (`cnnviz_fast._reference`)."""
from __future__ import annotations

import numpy as np

from cnnviz_fast import _reference as ref
from cnnviz_fast.graph import Unpool

from .onnx_models import run


def run_plan(model, layer, x: np.ndarray, seeds, mode: str = "deconvnet") -> np.ndarray:
    """Project `seeds` [(n, c, y, x)] of `layer` for images x: ORT segments + reference unpool."""
    plan = model.reverse_plan(layer)
    fwd = run(model.projection_graph(layer), {model.input_name: x})
    tap = fwd[plan.layer.tensor]
    signal = np.zeros((len(seeds), *tap.shape[1:]), np.float32)
    for k, (n, c, *pos) in enumerate(seeds):
        signal[(k, c, *pos)] = tap[(n, c, *pos)]
    return apply_plan(plan, signal, fwd, [s[0] for s in seeds], mode)


def apply_plan(plan, signal: np.ndarray, fwd: dict, rows, mode: str = "deconvnet") -> np.ndarray:
    """Run `plan`'s segments on `signal` [S, ...]; row s uses image rows[s] of the forward `fwd`."""
    rows = np.asarray(rows)
    for seg in plan.segments(mode):
        if isinstance(seg, Unpool):
            _, switches = ref.switch_pool(fwd[seg.input_tensor], seg.kernel, seg.strides, seg.pads,
                                          seg.dilations, seg.ceil_mode)
            signal = ref.unpool(signal, switches[rows], seg.kernel, seg.strides, seg.pads,
                                seg.dilations, output_size=seg.out_shape[1:])
        else:
            feeds = {seg.input: signal}
            feeds.update({name: fwd[tensor][rows] for name, tensor in seg.mask_inputs})
            signal = run(seg.proto, feeds, [seg.output])[seg.output]
    return signal
