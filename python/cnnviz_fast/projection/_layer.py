"""One layer of the projection pass: check every stored top-k activation, project it, cut its
patch, and write the unit grids, the optional float16 arrays and the layer's done-marker."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import render
from ._disk import memmap
from ._images import ImageCache
from ..results import TopK

MARKER = "layer.json"
EMPTY, OK, STALE = 0, 1, 2


@dataclass
class LayerJob:
    """What `project_layer` needs besides the images: the layer, its rows, the output folder."""

    layer: object            # cnnviz_fast.graph.Layer
    topk: TopK
    folder: Path
    paths: dict[int, str]
    config: dict             # goes into the marker; a marker with another config is redone


def seeds_by_image(topk: TopK) -> list[tuple[int, int]]:
    """(unit, rank) of every filled slot, ordered by image id (then unit, rank), so that each
    image's seeds run together and each image is forwarded once."""
    units, ranks = np.nonzero(topk.image_ids >= 0)
    order = np.lexsort((ranks, units, topk.image_ids[units, ranks]))
    return list(zip(units[order].tolist(), ranks[order].tolist()))


def chunks(pairs: list[tuple[int, int]], topk: TopK, max_seeds: int, max_images: int):
    """Consecutive runs of `pairs` holding whole images, at most `max_images` images and about
    `max_seeds` seeds each (one image with more seeds than that is a chunk of its own)."""
    chunk: list[tuple[int, int]] = []
    images: list[int] = []
    for unit, rank in pairs:
        image_id = int(topk.image_ids[unit, rank])
        if not images or images[-1] != image_id:
            if chunk and (len(chunk) >= max_seeds or len(images) >= max_images):
                yield images, chunk
                chunk, images = [], []
            images.append(image_id)
        chunk.append((unit, rank))
    if chunk:
        yield images, chunk


def project_layer(job: LayerJob, cache: ImageCache, forward: Callable[[np.ndarray], tuple],
                  reconstruct: Callable[[object, list], np.ndarray] | None, *, rtol: float, max_seeds: int,
                  max_images: int, save_arrays: bool, tick: Callable[[int], None],
                  unsupported: str | None = None) -> dict:
    """Project every filled (unit, rank) of `job`; returns the marker written to the folder.

    forward(x) runs a float32 batch forward once: (state, tapped tensor [n, C, h, w] or [n, C]);
    reconstruct(state, seeds) gives float32 [S, 3, R, R] boxes for seeds (n, c, y, x). A layer the
    reverse plan cannot invert has reconstruct None and `unsupported` the reason: its patches are
    still cut, its reconstructions are left zero (mid grey), the marker records the reason.
    """
    t0 = time.monotonic()
    layer, topk, folder = job.layer, job.topk, job.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    units, k = topk.units, topk.k
    rh, rw = layer.rf_size
    status = np.zeros((units, k), np.int8)
    recomputed = np.full((units, k), np.nan)
    stale: list[dict] = []
    tiles = {kind: memmap(folder / f".{kind}.{os.getpid()}.npy", np.uint8, (units, k, rh, rw, 3))
             for kind in ("recon", "patch")}  # space reserved: a full disk is an error, not a SIGBUS
    arrays = {kind: memmap(folder / f".{kind}.f16.{os.getpid()}.npy", np.float16, (units, k, 3, rh, rw))
              for kind in ("recon", "patches")} if save_arrays else {}
    pre = cache.pre

    def mark_stale(unit, rank, reason, value=None):
        status[unit, rank] = STALE
        image_id = int(topk.image_ids[unit, rank])
        stale.append({"unit": unit, "rank": rank, "image_id": image_id, "path": job.paths.get(image_id, "?"),
                      "stored": float(topk.values[unit, rank]), "recomputed": value, "reason": reason})

    for images, pairs in chunks(seeds_by_image(topk), topk, max_seeds, max_images):
        good = [i for i in images if i not in cache.failed]
        for unit, rank in pairs:
            image_id = int(topk.image_ids[unit, rank])
            if image_id in cache.failed:
                mark_stale(unit, rank, f"image cannot be read now: {cache.failed[image_id]}")
        if not good:
            tick(len(pairs))
            continue
        row = {image_id: n for n, image_id in enumerate(good)}
        x = cache.normalised(good)
        state, acts = forward(x)
        if acts.ndim == 2:
            acts = acts[:, :, None, None]
        seeds, keep = [], []
        for unit, rank in pairs:
            image_id = int(topk.image_ids[unit, rank])
            if image_id not in row:
                continue
            n, y, xx = row[image_id], int(topk.ys[unit, rank]), int(topk.xs[unit, rank])
            value = float(acts[n, unit, y, xx])
            recomputed[unit, rank] = value
            stored = float(topk.values[unit, rank])
            if not abs(value - stored) <= rtol * max(abs(stored), abs(value)) + 1e-7:
                mark_stale(unit, rank, "recomputed activation differs from results.db: the image file or "
                           "the model changed after mining", value)
                continue
            seeds.append((n, unit, y, xx))
            keep.append((unit, rank))
        if seeds:
            boxes = reconstruct(state, seeds) if reconstruct is not None else np.zeros((len(seeds), 3, rh, rw))
            for (n, unit, y, xx), (_, rank), r in zip(seeds, keep, boxes):
                box = layer.receptive_field(y, xx)
                patch = render.cut(x[n], box)
                tiles["recon"][unit, rank] = render.display(r)
                tiles["patch"][unit, rank] = render.unnormalise(patch, pre.mean, pre.std, pre.scale, pre.channel_order)
                status[unit, rank] = OK
                if arrays:
                    arrays["recon"][unit, rank] = r
                    arrays["patches"][unit, rank] = patch
        tick(len(pairs))

    files = _write_grids(folder, tiles, status, k)
    for kind, arr in arrays.items():
        arr.flush()
        tmp = Path(arr.filename)
        del arr
        os.replace(tmp, folder / f"{kind}.npy")
    for arr in tiles.values():
        tmp = Path(arr.filename)
        del arr
        tmp.unlink(missing_ok=True)
    tiles.clear()
    arrays.clear()
    marker = {
        **job.config, "layer": layer.name, "units": units, "k": k, "rf_size": list(layer.rf_size),
        "rf_stride": list(layer.rf_stride), "rf_start": list(layer.rf_start), "map_shape": list(layer.map_shape),
        "grid": {"cols": _cols(k), "pad": 1}, "files": files, "arrays": save_arrays,
        "status": status.tolist(), "boxes": _boxes(layer, topk), "recomputed": [[None if np.isnan(v) else v for v in row] for row in recomputed.tolist()],
        "stale": stale, "unsupported": unsupported,
        "projections": 0 if unsupported else int((status == OK).sum()), "elapsed_s": round(time.monotonic() - t0, 3),
    }
    tmp = folder / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, folder / MARKER)  # written last: its presence means the layer is complete
    return marker


def _boxes(layer, topk: TopK) -> list:
    """Per unit, per rank: the receptive-field box [top, left, bottom, right] (unclipped, input
    pixels) of the stored position, or None for an empty slot."""
    return [[list(layer.receptive_field(int(topk.ys[u, r]), int(topk.xs[u, r]))) if topk.image_ids[u, r] >= 0
             else None for r in range(topk.k)] for u in range(topk.units)]


def _cols(k: int) -> int:
    return max(1, int(np.ceil(np.sqrt(k))))


def _write_grids(folder: Path, tiles: dict, status: np.ndarray, k: int) -> list:
    """Per unit [recon file, patches file], or None for a unit without any filled slot."""
    units = status.shape[0]
    rh, rw = tiles["recon"].shape[2:4]
    hatch = render.stale_tile(rh, rw)
    files: list = []
    for unit in range(units):
        if not status[unit].any():
            files.append(None)
            continue
        names = []
        for kind, suffix in (("recon", "recon"), ("patch", "patches")):
            cells = [tiles[kind][unit, r] if status[unit, r] == OK else hatch if status[unit, r] == STALE else None
                     for r in range(k)]
            name = f"unit_{unit:04d}_{suffix}.png"
            render.save_png(folder / name, render.grid(cells, cols=_cols(k), pad=1))
            names.append(name)
        files.append(names)
    return files
