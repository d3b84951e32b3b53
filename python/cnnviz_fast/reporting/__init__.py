"""Pass 3, report: a static HTML report of a run, browsable from file:// and shareable as a folder.

    import cnnviz_fast
    index = cnnviz_fast.report("out/")     # writes out/report/index.html and returns its path

Layout of `out/report/`:
  index.html                    model summary, run provenance, one section per layer (its stats,
                                a montage of a random sample of units, the first layer's filters)
  layers/<layer>.html           every unit of the layer as a Fig. 2 pair: reconstructions | patches
  units/<layer>/unit_NNNN.html  one unit: its grids, statistics, and per rank the activation, the
                                source path and the whole preprocessed image with the receptive
                                field boxed
  img/                          the pictures (hard links to projections/ where the file system
                                allows, copies elsewhere), filters.png, <layer>/montage.png
  style.css
The report is self-contained: report/ alone can be zipped and opened elsewhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .. import render
from ..projection import PROJECTIONS
from ._data import RunView, first_conv_weights, gather
from ._html import CSS
from ._pages import index_page, layer_page, unit_page

__all__ = ["report", "write_report"]

MONTAGE_UNITS = 16
_MONTAGE_GRID_SIDE = 168  # pixels per unit grid in a montage: small maps enlarged, large ones reduced


def report(out_dir: str | os.PathLike, *, montage_units: int = MONTAGE_UNITS, seed: int = 0) -> Path:
    """Write `out_dir/report/` from results.db and projections/; returns the index.html path.

    montage_units: units per layer montage, drawn at random with `seed` (the same every time).
    Layers not projected yet still get their pages (statistics, top-k values and paths).
    """
    out = Path(out_dir)
    run = gather(out)
    final = out / "report"
    tmp = out / f".report.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img").mkdir(parents=True)
    (tmp / "style.css").write_text(render_css(), encoding="utf-8")
    _publish_images(run, tmp)
    filters = _filters(run, tmp)
    montages = {v.name: m for v in run.layers if (m := _montage(run, v, tmp, montage_units, seed))}
    _write(tmp / "index.html", index_page(run, filters, montages))
    for view in run.layers:
        _write(tmp / "layers" / f"{view.slug}.html", layer_page(run, view))
        for unit in range(view.info.units):
            _write(tmp / "units" / view.slug / f"unit_{unit:04d}.html", unit_page(run, view, unit))
    # Swap the finished report in, so a reader never sees half of one.
    old = out / f".report.{os.getpid()}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final / "index.html"


write_report = report





def render_css() -> str:
    """The report's stylesheet."""
    return CSS.lstrip()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _publish(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copyfile(src, dst)


def _publish_images(run: RunView, root: Path) -> None:
    proj = run.out / PROJECTIONS
    for view in run.layers:
        if not view.marker:
            continue
        for files in view.marker["files"]:
            for name in files or ():
                _publish(proj / view.slug / name, root / "img" / view.slug / name)
    for image_id in run.paths:
        src = proj / "images" / f"{image_id}.jpg"
        if src.is_file():
            _publish(src, root / "img" / "images" / f"{image_id}.jpg")
            run.thumbs[image_id] = f"img/images/{image_id}.jpg"


def _filters(run: RunView, root: Path) -> str | None:
    if run.model is None:
        return None
    w = first_conv_weights(run.model)
    if w is None:
        return None
    render.save_png(root / "img" / "filters.png", render.filter_tiles(w, pad=1, min_tile=24))
    return "img/filters.png"


def _montage(run: RunView, view, root: Path, count: int, seed: int) -> str | None:
    """A paper-style figure: `count` random units (fixed seed) of the layer, each as its pair."""
    if not view.marker:
        return None
    drawn = [u for u, f in enumerate(view.marker["files"]) if f]
    if not drawn:
        return None
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(drawn, size=min(count, len(drawn)), replace=False).tolist())
    folder = run.out / PROJECTIONS / view.slug
    pairs = []
    for unit in chosen:
        recon, patch = (_scaled(np.asarray(Image.open(folder / f).convert("RGB"))) for f in view.marker["files"][unit])
        pairs.append(render.pair(recon, patch, gap=4, background=(255, 255, 255)))
    render.save_png(root / "img" / view.slug / "montage.png", render.montage(pairs, cols=4, gap=10))
    return f"img/{view.slug}/montage.png"


def _scaled(grid: np.ndarray) -> np.ndarray:
    """A unit grid at about _MONTAGE_GRID_SIDE pixels: whole-number enlargement (sharp pixels) for
    small receptive fields, a smooth reduction for large ones."""
    side = max(grid.shape[:2])
    if side * 2 <= _MONTAGE_GRID_SIDE:
        return render.enlarge(grid, _MONTAGE_GRID_SIDE // side)
    if side > _MONTAGE_GRID_SIDE * 1.25:
        scale = _MONTAGE_GRID_SIDE / side
        size = (max(1, round(grid.shape[1] * scale)), max(1, round(grid.shape[0] * scale)))
        return np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.LANCZOS))
    return grid
