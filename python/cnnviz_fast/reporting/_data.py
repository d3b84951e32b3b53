"""What the report shows, gathered from results.db, the projection markers and (when its file is
still there) the model: one `LayerView` per mined layer and the run's summary."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..projection import MARKER, PROJECTIONS
from ..results import LayerInfo, MinedModelError, Results, TopK, load_mined_model
from ._integrity import dataset_root, neutral, neutral_deep, relative, stale_reason


@dataclass
class LayerView:
    """A mined layer with everything its pages need."""

    info: LayerInfo
    slug: str
    topk: TopK
    stats: list[dict]
    marker: dict | None
    rf: dict = field(default_factory=dict)   # size, stride, start (lists), or empty when unknown
    stale_projection: str | None = None      # why projections/<slug>/ was left out (another top-k or model)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def projected(self) -> bool:
        return self.marker is not None

    @property
    def dead(self) -> int:
        return sum(1 for s in self.stats if s["dead"])

    @property
    def stale(self) -> list[dict]:
        return list(self.marker["stale"]) if self.marker else []

    def files(self, unit: int) -> list[str] | None:
        """[recon grid, patch grid] file names of a unit (inside projections/<slug>/), or None."""
        if not self.marker:
            return None
        return self.marker["files"][unit]

    def status(self, unit: int, rank: int) -> str:
        """"ok", "stale", "empty" (no image for that rank) or "missing" (layer not projected)."""
        if not self.marker:
            return "missing" if self.topk.image_ids[unit, rank] >= 0 else "empty"
        return {0: "empty", 1: "ok", 2: "stale"}[self.marker["status"][unit][rank]]

    def box(self, unit: int, rank: int) -> list[int] | None:
        if self.marker and self.marker.get("boxes"):
            return self.marker["boxes"][unit][rank]
        if not self.rf or self.topk.image_ids[unit, rank] < 0:
            return None
        y, x = int(self.topk.ys[unit, rank]), int(self.topk.xs[unit, rank])
        top, left = self.rf["start"][0] + y * self.rf["stride"][0], self.rf["start"][1] + x * self.rf["stride"][1]
        return [top, left, top + self.rf["size"][0], left + self.rf["size"][1]]


@dataclass
class RunView:
    """The whole run: configuration, counts, layers, the model (None when its file is gone)."""

    out: Path
    run: dict
    counts: dict
    errors: list
    layers: list[LayerView]
    paths: dict[int, str]
    model: object | None
    model_note: str
    input_hw: tuple[int, int]
    thumbs: dict[int, str] = field(default_factory=dict)  # image_id -> path inside report/
    progress: dict = field(default_factory=dict)          # the miner's progress rows (status, images_done)


def slug(name: str) -> str:
    """A layer name made safe as a file name (the rule of `cnnviz_fast.graph.Layer.slug`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "layer"


def gather(out: Path, relative_paths: bool = False) -> RunView:
    """Everything the pages show. Names from the file system come with their bidirectional-control
    characters neutralised; `relative_paths`: image paths relative to the dataset root, and the
    dataset and model given by their last component only (a report to share)."""
    with Results(out) as res:
        run, counts, errors, progress = res.run, res.counts(), res.errors(), res.progress
        model, note = _model(res)
        views = []
        for info in res.layers():
            s = slug(info.name)
            marker = _marker(out / PROJECTIONS / s)
            topk = res.topk(info)
            why = stale_reason(marker, topk.digest(), run.get("model_sha256")) if marker else None
            if why:  # never show another run's pictures beside this run's paths
                marker = None
            views.append(LayerView(info, s, topk, res.unit_stats(info), marker, _rf(model, info, marker), why))
        ids = np.unique(np.concatenate([v.topk.image_ids.ravel() for v in views] or [np.zeros(0, np.int64)]))
        paths = res.paths(ids)
    if relative_paths:
        root = dataset_root(run.get("dataset"))
        paths = {i: relative(p, root) for i, p in paths.items()}
        errors = [(i, relative(p, root), reason.replace(str(root), ".") if root else reason)
                  for i, p, reason in errors]
        run = _shared_run(run)
    paths = {i: neutral(p) for i, p in paths.items()}
    errors = [(i, neutral(p), neutral(reason)) for i, p, reason in errors]
    size = run.get("input_size") or [3, *((run.get("preprocess") or {}).get("crop") or [0, 0])]
    return RunView(out, neutral_deep(run), counts, errors, views, paths, model, note, (int(size[-2]), int(size[-1])),
                   progress=progress)


def _shared_run(run: dict) -> dict:
    """The run table without the folders of this machine (model file and dataset by name only)."""
    run = dict(run)
    if run.get("model_path"):
        run["model_path"] = Path(run["model_path"]).name
    spec = run.get("dataset")
    if isinstance(spec, dict):
        spec = dict(spec)
        for key in ("root", "list"):
            if spec.get(key):
                spec[key] = Path(spec[key]).name
        if spec.get("shards"):
            spec["shards"] = [Path(p).name for p in spec["shards"]]
        run["dataset"] = spec
    return run


def first_conv_weights(model) -> np.ndarray | None:
    """float32 [C_out, 3, kh, kw] of the model's first Conv (BatchNorm folded), channels in RGB
    order, or None when the graph has none with a constant weight."""
    from onnx import numpy_helper

    g = model.proto.graph
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            if w.ndim == 4 and str(model.preprocess.get("channel_order", "RGB")).upper() == "BGR" and w.shape[1] == 3:
                w = w[:, ::-1]
            return w
    return None


def _model(res: Results):
    """The mined model, or None and what the pages leave out without it (a report must still come
    out when the model file is gone or changed)."""
    try:
        return load_mined_model(res), ""
    except MinedModelError as exc:
        return None, f"{exc.reason}: filters left out, and receptive fields of layers not projected"


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _rf(model, info: LayerInfo, marker: dict | None) -> dict:
    if marker:
        return {"size": marker["rf_size"], "stride": marker["rf_stride"], "start": marker["rf_start"]}
    if model is None:
        return {}
    try:
        layer = model.layer(info.name)
        return {"size": list(layer.rf_size), "stride": list(layer.rf_stride), "start": list(layer.rf_start)}
    except Exception:  # an op without known geometry: the pages show no boxes for this layer
        return {}
