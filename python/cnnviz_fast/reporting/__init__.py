"""Pass 3, report: a static HTML report of a run, browsable from file:// and shareable as a folder.

    import cnnviz_fast
    index = cnnviz_fast.report("out/")     # writes out/report/index.html and returns its path

Layout of `out/report/`:
  index.html                    model summary, run provenance, one section per layer (its stats,
                                a montage of a random sample of units, each tile a link to its
                                unit page; the first layer's filters)
  layers/<layer>.html           every unit of the layer as a Fig. 2 pair: reconstructions | patches
  units/<layer>/unit_NNNN.html  one unit: its grids, statistics, and per rank the activation, the
                                source path and the whole preprocessed image with the receptive
                                field boxed, and the histogram of its per-image maxima
  img/                          the pictures (hard links to projections/ where the file system
                                allows, copies elsewhere), filters.png
  style.css, report.js          the stylesheet; the layer pages' sorting and filtering (plain
                                JavaScript, no network, works from file://)
The report is self-contained: report/ alone can be zipped and opened elsewhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .. import render
from ..projection import MARKER, PROJECTIONS
from ..results import Results
from ._data import RunView, first_conv_weights, gather, slug
from ._integrity import cleans_up
from ._html import CSS, SCRIPT
from ._pages import index_page, layer_page, unit_page

__all__ = ["report", "write_report", "unprojected_layers"]

MONTAGE_UNITS = 16


@cleans_up  # integrity: a failed write leaves no temporary folder and says why (reporting/_integrity.py)
def report(out_dir: str | os.PathLike, *, montage_units: int = MONTAGE_UNITS, seed: int = 0,
           relative_paths: bool = False) -> Path:
    """Write `out_dir/report/` from results.db and projections/; returns the index.html path.

    montage_units: units per layer montage, drawn at random with `seed` (the same every time).
    Layers not projected yet still get their pages (statistics, top-k values and paths).
    """
    out = Path(out_dir)
    run = gather(out, relative_paths)  # relative_paths: image paths relative to the dataset root
    hists = _histograms(out, run)
    final = out / "report"
    tmp = out / f".report.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img").mkdir(parents=True)
    (tmp / "style.css").write_text(render_css(), encoding="utf-8")
    (tmp / "report.js").write_text(SCRIPT.lstrip(), encoding="utf-8")
    _publish_images(run, tmp)
    filters = _filters(run, tmp)
    montages = {v.name: m for v in run.layers if (m := montage_units_of(v, montage_units, seed))}
    _write(tmp / "index.html", index_page(run, filters, montages))
    for i, view in enumerate(run.layers):
        _write(tmp / "layers" / f"{view.slug}.html", layer_page(run, i))
        hist = hists.get(view.name)
        for unit in range(view.info.units):
            _write(tmp / "units" / view.slug / f"unit_{unit:04d}.html",
                   unit_page(run, view, unit, None if hist is None else hist[unit]))
    # Swap the finished report in, so a reader never sees half of one.
    old = out / f".report.{os.getpid()}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final / "index.html"


write_report = report


def unprojected_layers(out_dir: str | os.PathLike) -> list[str]:
    """The mined layers of `out_dir` that have no finished projection (`cnnviz-fast project` not
    run, or not finished): their report pages hold statistics and paths but no pictures."""
    out = Path(out_dir)
    with Results(out) as res:
        return [info.name for info in res.layers() if not (out / PROJECTIONS / slug(info.name) / MARKER).is_file()]


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


def montage_units_of(view, count: int, seed: int) -> list[int]:
    """The units of a layer's montage: `count` drawn at random with `seed` (the same every time)
    among those with pictures, ascending; [] when the layer has none."""
    if not view.marker:
        return []
    drawn = [u for u, f in enumerate(view.marker["files"]) if f]
    if not drawn:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(drawn, size=min(count, len(drawn)), replace=False).tolist())


def _histograms(out: Path, run: RunView) -> dict[str, np.ndarray]:
    """Each mined layer's unit_hist [units, N_BINS] (none for a results.db written without it)."""
    with Results(out) as res:
        return {v.name: h for v in run.layers if (h := res.unit_hist(v.info)) is not None}
