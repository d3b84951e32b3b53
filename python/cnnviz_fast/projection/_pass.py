"""`project()`: pass 2, from results.db to DIR/projections/."""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from .._dirlock import FolderBusy, lock_folder, unlock_folder
from .._progress import Progress
from ..data import Preprocess, default_workers, open_manifest
from ._images import ImageCache, scratch_path
from ._layer import MARKER, LayerJob, project_layer
from ..errors import CnnvizError, Interrupted, ProjectionError, ResultsError
from .._signals import interrupting, signal_name
from ..graph import UnsupportedOp
from ..results import Results, load_mined_model

PROJECTIONS = "projections"


@dataclass
class ProjectionSummary:
    """What a `project()` call did: layers projected and skipped (already done), projections
    drawn, `stale` entries (a recomputed activation that does not match results.db, or an image
    that cannot be read any more: dicts with layer, unit, rank, image_id, path, stored,
    recomputed, reason), elapsed seconds, where the output is."""

    out: Path
    device: str
    mode: str
    projected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    projections: int = 0
    images: int = 0
    stale: list[dict] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    def __str__(self) -> str:
        lines = [f"projected {len(self.projected)} layer(s) ({', '.join(self.projected) or 'none'}): "
                 f"{self.projections:,} projections from {self.images:,} images in {self.elapsed:.1f} s "
                 f"({self.mode}, {self.device})"]
        if self.skipped:
            lines.append(f"already done: {', '.join(self.skipped)}")
        for name, reason in self.unsupported.items():
            lines.append(f"cannot be projected: {name}: {reason}")
        if self.stale:
            lines.append(f"STALE: {len(self.stale)} top-k entr{'y' if len(self.stale) == 1 else 'ies'} no longer "
                         "match results.db (drawn as red hatching, listed in the report), e.g.")
            for s in self.stale[:5]:
                got = "unreadable" if s["recomputed"] is None else f"{s['recomputed']:.6g}"
                lines.append(f"  {s['layer']} unit {s['unit']} rank {s['rank']}: {s['path']} "
                             f"(stored {s['stored']:.6g}, now {got})")
            lines.append("  re-run `cnnviz-fast mine` on the current data (or restore the files) to fix them")
        lines.append(f"output: {self.out / PROJECTIONS}")
        return "\n".join(lines)


def project(out_dir: str | os.PathLike, *, layers: str | Sequence[str] | None = None, model=None,
            device: str = "auto", mode: str = "deconvnet", save_arrays: bool = False, force: bool = False,
            rtol: float = 1e-4, batch_size: int = 256, max_images: int = 64, workers: int | None = None,
            progress: str = "auto", stream: TextIO | None = None, ray: str | None = None) -> ProjectionSummary:
    """Project every top-k entry of `out_dir/results.db` back to pixels; write `out_dir/projections/`.

    Per layer folder: `unit_NNNN_recon.png` / `unit_NNNN_patches.png` (k-sized grids, rank 0 top
    left), `recon.npy` / `patches.npy` float16 [units, k, 3, R, R] with `save_arrays` (patches in
    the model's normalised input space, zero off the image), and `layer.json`, written last as the
    layer's done-marker (a later call skips layers whose marker matches, unless `force`).
    `projections/images/<image_id>.jpg` are thumbnails of the preprocessed images.

    Each recomputed activation is checked against the stored value (relative tolerance `rtol`);
    entries that differ are not drawn but listed in `ProjectionSummary.stale`. model: None (the
    file recorded in results.db), a path, or a `cnnviz_fast.Model`; it must be the mined model.
    batch_size: seeds per projector call; max_images: images per forward.
    ray: spread the layers over a Ray cluster ("local:N", "auto", "ray://host:port";
    `cnnviz_fast.cluster`), with the same outputs.
    """
    if ray is not None:
        from ..cluster import project as cluster_project

        return cluster_project(out_dir, ray=ray, layers=layers, model=model, device=device, mode=mode,
                               save_arrays=save_arrays, force=force, rtol=rtol, batch_size=batch_size,
                               max_images=max_images, workers=workers, progress=progress, stream=stream)
    t0 = time.monotonic()
    out = Path(out_dir)
    try:
        res = Results(out)
    except ResultsError as exc:
        raise ProjectionError(str(exc)) from None
    try:
        lock = _lock(out)
    except BaseException:
        res.close()
        raise
    manifest = summary = None
    try:
        with res:
            if res.status != "finished":
                raise ProjectionError(f"mining in {out} is not finished (status {res.status!r}): run the same "
                                      "`cnnviz-fast mine` command again to complete it first")
            model = _model(res, model)
            pre = Preprocess.from_dict(res.run["preprocess"])
            chosen = _layers(res, model, layers)
            from ..projection import Projector

            try:
                projector = Projector(model, device=device, mode=mode)
            except (CnnvizError, RuntimeError, ValueError) as exc:
                raise ProjectionError(f"projector: {exc}") from None
            summary = ProjectionSummary(out, projector.device.name, mode)
            jobs = []
            for info, layer in chosen:
                topk = res.topk(info)
                config = {"model_sha256": model.sha256, "mode": mode, "topk_digest": topk.digest(), "rtol": rtol}
                folder = out / PROJECTIONS / layer.slug
                if not force and _done(folder, config, save_arrays):
                    done = json.loads((folder / MARKER).read_text())
                    summary.skipped.append(layer.name)
                    summary.stale.extend({"layer": layer.name, **s} for s in done["stale"])
                    if done.get("unsupported"):
                        summary.unsupported[layer.name] = done["unsupported"]
                else:
                    jobs.append((layer, topk, folder, config))
            if not jobs:
                summary.elapsed = time.monotonic() - t0
                return summary
            manifest = _manifest(res)
            ids = np.unique(np.concatenate([t.image_ids[t.image_ids >= 0] for _, t, _, _ in jobs]))
            paths = res.paths(ids)
        with interrupting():  # SIGTERM too: finished layers stay, one line says so (`_interrupted`)
            return _run(jobs, ids, paths, model, manifest, pre, projector, summary, out / PROJECTIONS, t0,
                        rtol=rtol, batch_size=batch_size, max_images=max_images, save_arrays=save_arrays,
                        workers=workers, progress=progress, stream=stream)
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, out, summary) from None
    finally:
        if manifest is not None:
            manifest.close()
        unlock_folder(lock)


def _interrupted(exc: KeyboardInterrupt, out: Path, summary: ProjectionSummary | None) -> Interrupted:
    """The one line for a projection stopped by SIGINT/SIGTERM: the layers whose marker is
    written are complete and kept; a later `project` skips them and does the rest."""
    signum = getattr(exc, "signum", signal.SIGINT)
    done = summary.projected + summary.skipped if summary is not None else []
    kept = f"{len(done)} layer(s) done and kept ({', '.join(done)})" if done else "no layer was finished yet"
    return Interrupted(signum, f"interrupted by {signal_name(signum)}: {kept} in {out / PROJECTIONS}; run "
                               f"`cnnviz-fast project {out}` again to do the rest")


def _run(jobs, ids, paths, model, manifest, pre, projector, summary: ProjectionSummary, root: Path, t0: float, *,
         rtol: float, batch_size: int, max_images: int, save_arrays: bool, workers: int | None, progress: str,
         stream) -> ProjectionSummary:
    for leftover in list(root.glob(".images.*.npy")) + list(root.glob("*/.*.npy")):
        leftover.unlink(missing_ok=True)  # scratch files of a run that was killed (we hold the lock)
    bar = Progress(sum(int((t.image_ids >= 0).sum()) for _, t, _, _ in jobs), mode=progress, stream=stream,
                   label="projecting", unit="projections")
    bar.message(f"projecting {len(jobs)} layer(s) of {model.name} ({summary.mode}, {summary.device}): decoding "
                f"{len(ids):,} images")
    cache = ImageCache(manifest, pre, ids.tolist(), scratch_path(root), workers or default_workers(),
                       thumbs=root / "images")
    summary.images = len(ids) - len(cache.failed)
    try:
        for layer, topk, folder, config in jobs:
            bar.set_label(f"projecting {layer.name}")
            reason = _unsupported(model, layer)
            if reason is not None:
                summary.unsupported[layer.name] = reason
                bar.message(f"{layer.name}: cannot be projected: {reason}")
                try:
                    layer.rf_size
                except UnsupportedOp:  # no receptive field either: no patches to cut
                    bar.advance(int((topk.image_ids >= 0).sum()))
                    continue
            marker = project_layer(
                LayerJob(layer, topk, folder, paths, config), cache, _forward(projector, layer),
                None if reason else
                (lambda fwd, seeds, name=layer.name: np.asarray(projector.project_boxes(fwd, layer=name, seeds=seeds),
                                                                np.float32)),
                rtol=rtol, max_seeds=batch_size, max_images=max_images, save_arrays=save_arrays, tick=bar.advance,
                unsupported=reason)
            if reason is not None:
                continue
            summary.projected.append(layer.name)
            summary.projections += marker["projections"]
            summary.stale.extend({"layer": layer.name, **s} for s in marker["stale"])
    finally:
        cache.close()
        bar.close()
    summary.elapsed = time.monotonic() - t0
    return summary


def _unsupported(model, layer) -> str | None:
    """None when `layer`'s reverse plan exists, else one line: node, op and reason."""
    try:
        model.reverse_plan(layer)
    except UnsupportedOp as exc:
        return f'node "{exc.node}" ({exc.op_type}): {exc.reason or "no adjoint for this op"}'
    return None


def _lock(out: Path) -> int:
    """Hold DIR/.lock (the miner's lock file) while projecting: no miner and no second projection
    may write to the folder meanwhile."""
    try:
        return lock_folder(out, "projecting")
    except FolderBusy as busy:
        raise ProjectionError(f"{out} is {busy.doing} by another cnnviz-fast process{busy.who}; wait for it to "
                              "finish") from None


def _done(folder: Path, config: dict, save_arrays: bool) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(k) != v for k, v in config.items()):
        return False
    return not save_arrays or (marker.get("arrays") and (folder / "recon.npy").is_file())


def _model(res: Results, model):
    try:
        return load_mined_model(res, model)
    except ResultsError as exc:
        raise ProjectionError(str(exc)) from None


def _manifest(res: Results):
    spec = res.run.get("dataset")
    try:
        manifest = open_manifest(spec)
    except (ValueError, OSError, TypeError) as exc:
        raise ProjectionError(f"cannot open the mined dataset {spec!r}: {exc}") from None
    want = res.run.get("dataset_fingerprint")
    if want and manifest.fingerprint() != want:
        n = len(manifest)
        manifest.close()
        raise ProjectionError(f"the dataset changed since mining (files added, removed or renamed: "
                              f"{n} images now, {res.run.get('dataset_images', '?')} mined), so image ids no "
                              "longer match results.db: mine again")
    return manifest


def _layers(res: Results, model, spec):
    mined = res.layers()
    if spec is not None:
        names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        unknown = [n for n in names if n not in {m.name for m in mined}]
        if unknown:
            raise ProjectionError(f"layer(s) {', '.join(unknown)} were not mined; mined: "
                                  f"{', '.join(m.name for m in mined)}")
        mined = [m for m in mined if m.name in names]
    out = []
    for info in mined:
        try:
            layer = model.layer(info.name)
        except ValueError:
            layer = model.layer(info.tensor)
        out.append((info, layer))
    return out


def _forward(projector, layer):
    """One forward pass of a batch for `layer` (switches recorded once), and its tapped tensor on
    the host to check the stored values against."""
    def run(x: np.ndarray):
        fwd = projector.forward(x, [layer])
        return fwd, projector.device.host(fwd.values[layer.tensor])

    return run
