"""`project(..., ray=...)`: the projection pass on a Ray cluster, spread by layer.

A layer is the unit of work: its projections depend only on its own top-k rows and images, so a
worker that decodes that layer's images and runs `projection._layer.project_layer` writes exactly
the files a single process writes (grids, arrays, the layer.json marker, thumbnails; every file
written atomically, so two workers writing the same thumbnail is harmless). Workers write into
DIR/projections themselves: the cluster must share DIR, as it shares the dataset. The driver holds
DIR's lock, hands out the layers still to do (largest first), and sums the markers it gets back.
"""
from __future__ import annotations

import collections
import contextlib
import json
import time

from .._signals import interrupting
from ..errors import ProjectionError
from ._pool import Pool
from ._ray import Cluster, parse_address


class LayerWorker:
    """Projects whole layers of one results.db. `job`: model_name, mode, device, threads,
    workers, dataset, fingerprint, pre, root (DIR/projections), rtol, batch_size, max_images,
    save_arrays, layers {name: (topk, folder, config, paths)}."""

    def __init__(self, model_bytes: bytes, job: dict):
        import os
        import socket

        self.job, self.failure = job, None
        self.where = f"{socket.gethostname()} pid {os.getpid()}"
        self.manifest = None
        try:
            self._open(model_bytes)
        except Exception as exc:  # the worker's message (see cluster._actor)
            self.failure = " ".join(str(exc).split()) or type(exc).__name__

    def _open(self, model_bytes: bytes) -> None:
        import onnx

        from ..data import open_manifest
        from ..graph import Model
        from ..projection import Projector

        job = self.job
        try:
            self.model = Model.from_proto(onnx.load_model_from_string(model_bytes), name=job["model_name"])
        except Exception as exc:  # onnx's DecodeError, InvalidModel, ...
            raise RuntimeError(f"cannot load the model the driver sent: {exc}") from None
        try:
            self.manifest = open_manifest(job["dataset"])
        except (ValueError, OSError) as exc:
            raise RuntimeError(f"cannot open the dataset here ({exc}); every worker reads the images by path, "
                               "so the cluster must share that storage at the same path") from None
        if self.manifest.fingerprint() != job["fingerprint"]:
            raise RuntimeError("the dataset looks different here: every worker must see the same files")
        self.projector = Projector(self.model, device=job["device"], mode=job["mode"], threads=job["threads"])

    def ready(self) -> dict:
        return {"failure": self.failure, "where": self.where, "threads": self.job["threads"]}

    def progress(self) -> int:
        return 0

    def project_layer(self, name: str) -> dict:
        """Project layer `name`: {"projections", "stale", "failed": image ids not readable}."""
        if self.failure is not None:
            return {"failure": self.failure, "where": self.where}
        import numpy as np

        from ..graph import UnsupportedOp
        from ..projection import _pass
        from ..projection._images import ImageCache, scratch_path
        from ..projection._layer import LayerJob, project_layer

        job = self.job
        topk, folder, config, paths = job["layers"][name]
        layer = self.model.layer(name)
        # As projection._pass._run: a layer without a reverse plan still gets its patches (when it
        # has a receptive field) and a marker saying why it has no reconstructions.
        reason = _pass._unsupported(self.model, layer)
        if reason is not None:
            try:
                layer.rf_size
            except UnsupportedOp:
                return {"projections": 0, "stale": [], "failed": [], "unsupported": reason, "where": self.where}
        ids = np.unique(topk.image_ids[topk.image_ids >= 0])
        cache = ImageCache(self.manifest, job["pre"], ids.tolist(), scratch_path(folder.parent), job["workers"],
                           thumbs=job["root"] / "images")
        projector = self.projector
        try:
            marker = project_layer(
                LayerJob(layer, topk, folder, paths, config), cache, _pass._forward(projector, layer),
                None if reason else
                (lambda fwd, seeds: np.asarray(projector.project_boxes(fwd, layer=name, seeds=seeds), np.float32)),
                rtol=job["rtol"], max_seeds=job["batch_size"], max_images=job["max_images"],
                save_arrays=job["save_arrays"], tick=lambda n: None, unsupported=reason)
        finally:
            cache.close()
        return {"projections": marker["projections"], "stale": marker["stale"], "failed": sorted(cache.failed),
                "unsupported": reason, "where": self.where}


def project(out_dir, *, ray: str, layers=None, model=None, device: str = "auto", mode: str = "deconvnet",
            save_arrays: bool = False, force: bool = False, rtol: float = 1e-4, batch_size: int = 256,
            max_images: int = 64, workers: int | None = None, threads: int | None = None, progress: str = "auto",
            stream=None):
    """`cnnviz_fast.project` with the layers spread over the cluster `ray` names."""
    from pathlib import Path

    import numpy as np

    from .._dirlock import unlock_folder
    from .._progress import Progress
    from ..data import Preprocess
    from ..errors import ResultsError
    from ..projection import _pass
    from ..results import Results

    t0 = time.monotonic()
    address = parse_address(ray, ProjectionError)
    out = Path(out_dir)
    cluster = Cluster(address, ProjectionError, threads)  # imports Ray (or says how to install it)
    with contextlib.ExitStack() as stack:
        try:
            res = Results(out)
        except ResultsError as exc:
            raise ProjectionError(str(exc)) from None
        lock = None
        try:
            lock = _pass._lock(out)
            with res:
                if res.status != "finished":
                    raise ProjectionError(f"mining in {out} is not finished (status {res.status!r}): run the same "
                                          "`cnnviz-fast mine` command again to complete it first")
                model = _pass._model(res, model)
                pre = Preprocess.from_dict(res.run["preprocess"])
                chosen = _pass._layers(res, model, layers)
                stack.enter_context(cluster)  # started once results.db and the model are known to be good
                pool = Pool(cluster, address, device, threads, workers, verb="projecting", what="layer")
                summary = _pass.ProjectionSummary(out, pool.device, mode)
                jobs = {}
                for info, layer in chosen:
                    topk = res.topk(info)
                    config = {"model_sha256": model.sha256, "mode": mode, "topk_digest": topk.digest(), "rtol": rtol}
                    folder = out / _pass.PROJECTIONS / layer.slug
                    if not force and _pass._done(folder, config, save_arrays):
                        done = json.loads((folder / _pass.MARKER).read_text())
                        summary.skipped.append(layer.name)
                        summary.stale.extend({"layer": layer.name, **s} for s in done["stale"])
                        if done.get("unsupported"):
                            summary.unsupported[layer.name] = done["unsupported"]
                    else:
                        ids = np.unique(topk.image_ids[topk.image_ids >= 0])
                        jobs[layer.name] = (topk, folder, config, res.paths(ids))
                if not jobs:
                    summary.elapsed = time.monotonic() - t0
                    return summary
                manifest = _pass._manifest(res)  # checks the dataset is the mined one, as the single process does
                manifest.close()
                fingerprint = res.run.get("dataset_fingerprint")
                spec = res.run.get("dataset")
            root = out / _pass.PROJECTIONS
            for leftover in list(root.glob(".images.*.npy")) + list(root.glob("*/.*.npy")):
                leftover.unlink(missing_ok=True)  # scratch files of a run that was killed (we hold the lock)
            job = {"model_name": model.name, "mode": mode, "device": pool.device, "threads": pool.threads,
                   "workers": pool.decode_workers, "dataset": spec, "fingerprint": fingerprint, "pre": pre,
                   "root": root, "rtol": rtol, "batch_size": batch_size, "max_images": max_images,
                   "save_arrays": save_arrays, "layers": jobs}
            total = sum(int((t.image_ids >= 0).sum()) for t, *_ in jobs.values())
            bar = Progress(total, mode=progress, stream=stream, label=pool.label(), unit="projections")
            bar.message(f"projecting {len(jobs)} layer(s) of {model.name} ({mode}, {pool.device}) on "
                        f"{pool.describe()}")
            # Largest layers first, so that the last one to finish is a small one.
            order = sorted(jobs, key=lambda n: -int((jobs[n][0].image_ids >= 0).sum()))
            names = [layer.name for _, layer in chosen]
            done, failed, markers = 0, set(), {}
            try:
                with interrupting():  # SIGTERM too: finished layers stay, as in the single process
                    pool.start(model.serialized(), job, LayerWorker, "project_layer")
                    for (name, _), result in pool.results(collections.deque((n, n) for n in order), 3,
                                                        lambda: bar.update(done)):
                        markers[name] = result
                        if result["unsupported"]:
                            bar.message(f"{name}: cannot be projected: {result['unsupported']}")
                        failed.update(result["failed"])
                        done += int((jobs[name][0].image_ids >= 0).sum())
                        bar.set_label(pool.label())
                        bar.update(done)
                    bar.update(done, force=True)
            except KeyboardInterrupt as exc:
                _sum_up(summary, names, markers)
                raise _pass._interrupted(exc, out, summary) from None
            finally:
                pool.close()
                bar.close()
            all_ids = np.unique(np.concatenate([t.image_ids[t.image_ids >= 0] for t, *_ in jobs.values()]))
            summary.images = len(all_ids) - len(failed)
            _sum_up(summary, names, markers)
            summary.elapsed = time.monotonic() - t0
            return summary
        finally:
            if lock is not None:
                unlock_folder(lock)


def _sum_up(summary, names: list[str], markers: dict) -> None:
    """The finished layers' markers into the summary, in the mined layers' order (the single
    process's)."""
    for name in names:
        if name in markers and markers[name]["unsupported"]:
            summary.unsupported[name] = markers[name]["unsupported"]
        elif name in markers:
            summary.projected.append(name)
            summary.projections += markers[name]["projections"]
            summary.stale.extend({"layer": name, **s} for s in markers[name]["stale"])
