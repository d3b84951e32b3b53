"""`Projector`: Zeiler & Fergus deconvnet projections of single activations back to pixels.

    p = Projector(model, device="auto", mode="deconvnet")
    full = p.project(x, layer="conv5", seeds=[(0, 17, 6, 6), (3, 200, 0, 12)])   # [S, 3, H, W]
    boxes = p.project_boxes(x, layer="conv5", seeds=...)                         # [S, 3, R, R]

    fwd = p.forward(x, layers=["conv1", "conv5"])     # one forward pass for several layers
    p.project(fwd, layer="conv1", seeds=...)

x is a preprocessed float32 batch [N, 3, H, W]; seed (n, c, y, x) projects the activation value at
(c, y, x) of image n's tapped tensor (fully connected layers: (n, c)). The forward pass runs once
per image batch, switches are recorded once per image, and the seeds of many images go through
each reverse pass together. Windowed passes (the default) compute each seed only inside its
receptive field and equal the full-frame pass there; it is zero outside.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..graph import Layer, MODES, Model
from ..runtime import resolve_device
from ._device import Device
from ._execute import run_pass
from ._forward import Forward, forward_graphs, switch_sources
from ._graphs import prep_graph, regrid_graph
from ._plan import CompiledPlan, compile_plan
from ._window import window_index

_BATCH_BYTES = {"cpu": 192 << 20, "cuda": 2 << 30}


class Projector:
    """Deconvnet ("deconvnet"), guided backprop ("guided") or plain gradient ("gradient") projections.

    `model`: a `cnnviz_fast.Model`, or what `Model.load` accepts without weights (an .onnx path,
    "demo").

    `device`: "auto" (CUDA only when the native build, a GPU and ONNX Runtime's CUDA EP are all
    there), "cpu" or "cuda" (raises `DeviceUnavailable` saying why when it cannot run).
    `windowed`: compute inside receptive-field windows where the plan allows it and it is cheaper.
    `threads`: ONNX Runtime intra-op threads (and the native kernels', process-wide) on the CPU.
    `batch`: most seeds per reverse pass (default: sized from the largest per-seed tensor).
    """

    def __init__(self, model, device: str = "auto", mode: str = "deconvnet", windowed: bool = True,
                 threads: int | None = None, batch: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if threads is not None:
            from .. import _C

            _C.set_num_threads(int(threads))
        # A name or path is loaded as Model.load loads it ("demo", "zoo:zfnet" needs weights: load it
        # with Model.load and pass the Model).
        self.model = model if isinstance(model, Model) else Model.load(model)
        self.mode = mode
        self.windowed = windowed
        self.batch = batch
        self.device = Device(resolve_device(device), threads)
        self._plans: dict[tuple[str, bool], CompiledPlan] = {}
        self._forwards: dict[tuple[str, ...], tuple] = {}
        self._sessions: dict[tuple, object] = {}

    def __repr__(self) -> str:
        return f"Projector({self.model.name!r}, device={self.device.name!r}, mode={self.mode!r})"

    def forward(self, x: np.ndarray, layers: Sequence[str | Layer] | None = None) -> Forward:
        """Run image batch `x` [N, 3, H, W] forward once for `layers` (default: the model's conv
        layers); pass the result to `project` / `project_boxes` in place of `x`."""
        layers = self.model.taps(layers)
        x = self._check_images(x)
        key = tuple(layer.name for layer in layers)
        if key not in self._forwards:
            self._forwards[key] = ([(self.device.session(proto, once_per_batch=True), outs)
                                    for proto, outs in forward_graphs(self.model, layers, self.mode)],
                                   switch_sources(self.model, layers, self.mode))
        graphs, (pools, drop) = self._forwards[key]
        values = {}
        for sess, outs in graphs:
            got = self.device.run(sess, {self.model.input_name: x}, outs)
            values.update(zip(outs, got))
        fwd = Forward(self, len(x), values, list(key))
        fwd.record(pools, drop)
        return fwd

    def project(self, x, layer: str | Layer, seeds, windowed: bool | None = None) -> np.ndarray:
        """float32 [S, 3, H, W]: each seed's projection in the full input frame."""
        return self._project(x, layer, seeds, windowed, boxes=False)

    def project_boxes(self, x, layer: str | Layer, seeds, windowed: bool | None = None) -> np.ndarray:
        """float32 [S, 3, R, R]: each projection cropped to its receptive-field box (R = the layer's
        `rf_size`; box origin `Projector.box_origins`), zero where the box runs off the image."""
        return self._project(x, layer, seeds, windowed, boxes=True)

    def box_origins(self, layer: str | Layer, seeds) -> np.ndarray:
        """int64 [S, 2]: (top, left) in input pixels of each seed's R x R box (may be negative)."""
        layer = self._layer(layer)
        s = _seed_array(seeds, layer)
        if layer.covers_whole_input:
            return np.zeros((len(s), 2), np.int64)
        return np.stack([s[:, 2] * layer.rf_stride[0] + layer.rf_start[0],
                         s[:, 3] * layer.rf_stride[1] + layer.rf_start[1]], axis=1).astype(np.int64)

    def seed_values(self, x, layer: str | Layer, seeds) -> np.ndarray:
        """float32 [S]: the activation each seed projects (to check against stored top-k values)."""
        layer = self._layer(layer)
        fwd = self._forward_for(x, layer)
        s = _seed_array(seeds, layer, fwd.images)
        tap = self.device.host(fwd.values[layer.tensor])
        return tap[tuple(s.T)] if tap.ndim == 4 else tap[s[:, 0], s[:, 1]]

    def is_windowed(self, layer: str | Layer, windowed: bool | None = None) -> bool:
        """Whether `layer`'s passes run in windows (False: not possible, or dearer than full frame)."""
        return self._plan(self._layer(layer), self.windowed if windowed is None else windowed).windowed

    def switch_bytes(self, layers: Sequence[str | Layer] | None = None, images: int = 1) -> tuple[int, int]:
        """(uint8 bytes, int64 bytes) of the switches of `images` images for `layers`' MaxPools."""
        pools = {}
        for layer in self.model.taps(layers):
            for step in self.model.reverse_plan(layer).steps:
                if step.native:
                    pools[(step.input_tensor, step.kernel, step.strides, step.pads)] = int(np.prod(step.in_shape))
        n = images * sum(pools.values())
        return n, 8 * n

    # ---- internals ----

    def _project(self, x, layer, seeds, windowed, boxes: bool) -> np.ndarray:
        layer = self._layer(layer)
        plan = self._plan(layer, self.windowed if windowed is None else windowed)
        fwd = self._forward_for(x, layer)
        s = _seed_array(seeds, layer, fwd.images)
        h, w = self.model.input_size[1:]
        size = tuple(layer.rf_size) if boxes else (h, w)
        out = np.zeros((len(s), plan.image_level.channels, *size), np.float32)
        step = self.batch or max(1, min(1024, _BATCH_BYTES[self.device.name] // (3 * plan.seed_bytes)))
        for lo in range(0, len(s), step):
            chunk = s[lo:lo + step]
            y = run_pass(self.device, fwd, plan, chunk)
            out[lo:lo + len(chunk)] = self.device.host(self._reframe(plan, layer, chunk, y, boxes))
        return out

    def _reframe(self, plan: CompiledPlan, layer: Layer, s: np.ndarray, y, boxes: bool):
        """Crop a full-frame result to the boxes, or paste a windowed one into the frame."""
        if boxes == plan.windowed:
            return y
        n = np.arange(len(s))
        origin = self.box_origins(layer, s)
        hw, box = tuple(self.model.input_size[1:]), tuple(layer.rf_size)
        if boxes:
            idx, _, _ = window_index(n, origin[:, 0], origin[:, 1], box, hw, len(s))
        else:
            idx, _, _ = window_index(n, -origin[:, 0], -origin[:, 1], hw, box, len(s))
        channels = plan.image_level.channels
        return self.device.run(self._session(("regrid", channels), lambda: regrid_graph(channels)),
                               {"x": y, "idx": idx}, ["y"])[0]

    def _forward_for(self, x, layer: Layer) -> Forward:
        if not isinstance(x, Forward):
            return self.forward(x, [layer])
        if x.model is not self.model or x.device != self.device.name:
            raise ValueError("this Forward was made by a projector of another model or device")
        if layer.name not in x.layers:
            raise ValueError(f"this Forward was made for layers {x.layers}, not {layer.name!r}")
        return x

    def _layer(self, layer: str | Layer) -> Layer:
        return layer if isinstance(layer, Layer) else self.model.layer(layer)

    def _plan(self, layer: Layer, windowed: bool) -> CompiledPlan:
        key = (layer.name, bool(windowed))
        if key not in self._plans:
            self._plans[key] = compile_plan(self.model.reverse_plan(layer), self.mode, windowed,
                                            self.device.session)
        return self._plans[key]

    def _prep_session(self, channels: int, spatial: bool, dtype: int, fill):
        key = ("prep", channels, spatial, dtype, fill)
        return self._session(key, lambda: prep_graph(channels, spatial, dtype, fill), once_per_batch=True)

    def _session(self, key, build, once_per_batch: bool = False):
        if key not in self._sessions:
            self._sessions[key] = self.device.session(build(), once_per_batch)
        return self._sessions[key]

    def _check_images(self, x) -> np.ndarray:
        x = np.asarray(x)
        want = tuple(self.model.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images must be float32 [N, {', '.join(map(str, want))}], got {list(x.shape)}")
        return np.ascontiguousarray(x, dtype=np.float32)


def _seed_array(seeds, layer: Layer, images: int | None = None) -> np.ndarray:
    """Seeds as int64 [S, 4] (n, c, y, x), checked against the layer (fc seeds: y = x = 0)."""
    rows = [tuple(int(v) for v in seed) for seed in seeds]
    rows = [r + (0, 0) if len(r) == 2 else r for r in rows]
    if any(len(r) != 4 for r in rows):
        raise ValueError("each seed is (n, c, y, x), or (n, c) for a fully connected layer")
    s = np.array(rows, np.int64).reshape(-1, 4)
    h, w = layer.map_shape
    bad = (s[:, 1] < 0) | (s[:, 1] >= layer.units) | (s[:, 2] < 0) | (s[:, 2] >= h) | (s[:, 3] < 0) | (s[:, 3] >= w)
    if images is not None:
        bad |= (s[:, 0] < 0) | (s[:, 0] >= images)
    if bad.any():
        raise ValueError(f"seed {tuple(s[np.argmax(bad)])} is outside layer {layer.name} "
                         f"({layer.units} units, map {h}x{w}) or the batch of {images} images")
    return s
