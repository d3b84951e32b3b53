"""`mine()`: pass 1 of cnnviz_fast, streaming a dataset through the mining graph into results.db.

The driver orchestrates: it checks the arguments, opens results.db (resuming an unfinished run),
runs the loop of `_loop.mine_batches` over the batches still to do, checkpoints, enforces the error
budget, reports progress and returns the summary. The loop itself knows none of that.
"""
from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from ..data import BatchLoader, Manifest, Preprocess, default_workers, open_manifest
from ..data.manifest import sample_ids
from .._progress import Progress
from ._loop import mine_batches
from ._session import ForwardSession
from ._state import MiningState
from .errors import ErrorRateExceeded, MiningError
from ..results import ResultsDB, open_results
from ..runtime import resolve_device
from .summary import MiningSummary


def mine(model, data, out: str | os.PathLike, *, layers: str | Sequence[str] | None = None, top_k: int = 9,
         batch_size: int = 32, workers: int | None = None, device: str = "auto", weights=None,
         random_weights: bool = False, overwrite: bool = False, max_error_rate: float | None = None,
         checkpoint_images: int = 10_000, checkpoint_seconds: float = 60.0, progress: str = "auto",
         draft: bool = False, heads: str = "auto", threads: int | None = None, limit: int | None = None,
         stream: TextIO | None = None) -> MiningSummary:
    """Find the `top_k` images of `data` that excite each unit of `layers` most; write OUT/results.db.

    model: a `cnnviz_fast.Model`, an .onnx path, or a zoo name ("demo", "zoo:zfnet" with `weights`
    or `random_weights`). data: a folder tree, a text file listing image paths, tar shards
    ("shard-{000000..000146}.tar"), or a `cnnviz_fast.data.Manifest`. layers: None (ReLU after
    each Conv), "all" (plus fully connected), or names. device: "auto" | "cpu" | "cuda".
    workers: decode threads (default: one per core). threads: ONNX Runtime intra-op threads
    (default: one per core). draft: JPEG draft decoding (faster for large JPEGs, slightly different
    pixels; part of the configuration). heads: "auto" | "graph" | "native" (how maxima are reduced).
    limit: mine only a fixed sample of that many images, evenly spaced over the manifest
    (`cnnviz_fast.data.manifest.sample_ids`; the same sample every time, part of the configuration;
    image ids stay manifest positions), for a quick look before the full run.

    An unfinished run of the same configuration in `out` is resumed; another configuration raises
    ConfigMismatch unless `overwrite`. Checkpoints (one SQLite transaction each) every
    `checkpoint_images` images or `checkpoint_seconds` seconds. progress: "auto" | "bar" |
    "lines" | "none". Raises ErrorRateExceeded (results written) when more than `max_error_rate`
    of the images failed, MiningError subclasses for every problem a user can fix.
    """
    if top_k < 1:
        raise MiningError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise MiningError(f"batch size must be >= 1, got {batch_size}")
    for what, value in (("workers", workers), ("threads", threads)):
        if value is not None and value < 1:
            raise MiningError(f"{what} must be >= 1, got {value}")
    if limit is not None and limit < 1:
        raise MiningError(f"limit must be >= 1, got {limit}")
    if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
        raise MiningError(f"max error rate must be between 0 and 1, got {max_error_rate}")
    report = Progress(0, errors=0, mode=progress, stream=stream)
    target = resolve_device(device, option="--device")
    dev, dev_note = target.name, target.reason
    model = _load_model(model, weights, random_weights)
    taps = _taps(model, layers)
    pre = _preprocess(model, draft)
    manifest = data if isinstance(data, Manifest) else _manifest(data)
    workers = workers or default_workers()
    sample = sample_ids(len(manifest), limit)
    config = {
        "model_sha256": model.sha256, "top_k": top_k, "preprocess": pre.to_dict(),
        "layers": [{"name": t.name, "tensor": t.tensor, "kind": t.kind, "units": t.units,
                    "map_shape": list(t.map_shape)} for t in taps],
        "dataset": manifest.spec, "dataset_images": len(manifest), "dataset_fingerprint": manifest.fingerprint(),
        "batch_size": batch_size, "device": dev, "limit": None if sample is None else limit,
    }
    db, resumed = open_results(out, config, _provenance(model), manifest, overwrite)
    try:
        report.message(dev_note)
        for w in manifest.warnings:
            report.message(f"warning: {w}")
        if sample is not None:
            report.message(f"mining a sample of {limit:,} of the {len(manifest):,} images (limit)")
        return _run(db, resumed, model, taps, pre, manifest, dev, config, report, sample, workers=workers,
                    heads=heads, threads=threads, max_error_rate=max_error_rate,
                    checkpoint_images=checkpoint_images, checkpoint_seconds=checkpoint_seconds)
    finally:
        db.close()
        if not isinstance(data, Manifest):
            manifest.close()


def _run(db: ResultsDB, resumed: bool, model, taps, pre: Preprocess, manifest: Manifest, dev: str, config: dict,
         report: Progress, sample, *, workers: int, heads: str, threads: int | None, max_error_rate: float | None,
         checkpoint_images: int, checkpoint_seconds: float) -> MiningSummary:
    k, batch_size = config["top_k"], config["batch_size"]
    total = len(manifest) if sample is None else len(sample)
    state = MiningState(taps, k, dev)
    prog = db.progress()
    next_batch, done = int(prog["next_batch"]), int(prog["images_done"])
    errors, elapsed0, checkpoints = db.error_count(), float(prog["elapsed_s"]), int(prog["checkpoints"])
    summary = MiningSummary(db.out, db.path, dev, [t.name for t in taps], sum(t.units for t in taps), total,
                            done, errors, 0, 0.0, prog["status"], resumed_from=done if resumed else 0)
    if prog["status"] == "finished":
        summary.already_finished = True
        summary.dead_units = _dead_units(db.load_state(taps, k))
        report.message(str(summary))
        _check_error_rate(summary, max_error_rate)
        return summary
    if resumed:
        state.restore(db.load_state(taps, k), next_batch)
        report.message(f"resuming {db.path}: {done:,} of {total:,} images done, {errors:,} errors")
    # Batches travel as uint8 crops and the graph normalises them (see _optimize.uint8_input_graph).
    session = ForwardSession(model, taps, dev, heads=heads, threads=threads, uint8_input=pre)
    ort_threads = session.session.get_session_options().intra_op_num_threads
    db.set_run(heads=session.heads, lrn_rewritten=session.rewritten_lrns, workers=workers, threads=ort_threads)
    # When ONNX Runtime's threads fill every core, decoding the next batch during the forward pass
    # only slows it: each op ends when its slowest part does, and a decode thread sharing a core
    # delays one part. Then each batch is decoded (by all workers) just before it is needed;
    # otherwise (a GPU, or spare cores) decoding runs ahead. See benchmarks/mining.py.
    depth = 1 if dev == "cpu" and ort_threads >= default_workers() else 3
    report.reset(total, done, errors)
    report.update(done, errors, force=True)
    pending: list[tuple[int, str, str]] = []
    status, t0 = "running", time.monotonic()
    last_ckpt, since_ckpt = t0, 0

    def checkpoint(status_now: str) -> None:
        nonlocal checkpoints, last_ckpt, since_ckpt
        checkpoints += 1
        db.checkpoint(taps, state.snapshot(), pending, {
            "status": status_now, "next_batch": state.next_batch, "images_done": done,
            "checkpoints": checkpoints, "elapsed_s": elapsed0 + time.monotonic() - t0})
        pending.clear()
        last_ckpt, since_ckpt = time.monotonic(), 0

    # A sample is mined as consecutive runs of batch_size of its ids (packed): its own batch grid,
    # fixed by the sample, so resume and the exact sums work on it as on the whole manifest.
    loader = BatchLoader(manifest, pre, batch_size, workers, start_batch=next_batch, depth=depth, layout="uint8",
                         allocate=session.allocate, ids=sample, packed=sample is not None)
    if session.pinned_note:
        summary.notes.append(session.pinned_note)
        report.message(f"note: {session.pinned_note}")
    try:
        with loader:
            for batch in mine_batches(session, loader, state):
                pending.extend(batch.errors)
                errors += len(batch.errors)
                done += batch.size
                since_ckpt += batch.size
                report.update(done, errors)
                if max_error_rate is not None and errors > max_error_rate * total:
                    status = "stopped"
                    break
                if since_ckpt >= checkpoint_images or time.monotonic() - last_ckpt >= checkpoint_seconds:
                    checkpoint("running")
        if status != "stopped":
            status = "finished"
        checkpoint(status)
    except KeyboardInterrupt:
        report.close()
        report.message(f"interrupted: results up to the last checkpoint are in {db.path}; "
                       "run the same command again to resume")
        raise
    finally:
        session.close()
    report.update(done, errors, force=True)
    report.close()
    summary.done, summary.errors, summary.status = done, errors, status
    summary.processed = done - summary.resumed_from
    summary.elapsed = time.monotonic() - t0
    summary.dead_units = _dead_units(state.snapshot())
    if status == "stopped":
        summary.notes.append(f"{errors:,} images failed, more than --max-error-rate {max_error_rate} of "
                             f"{total:,} allows, so mining stopped at image {done:,}")
    report.message(str(summary))
    _check_error_rate(summary, max_error_rate)
    return summary


def _check_error_rate(summary: MiningSummary, max_error_rate: float | None) -> None:
    if max_error_rate is None:
        return
    if summary.status == "stopped" or summary.errors > max_error_rate * summary.images:
        raise ErrorRateExceeded(f"{summary.errors:,} of {summary.images:,} images failed "
                                f"({100 * summary.errors / max(summary.images, 1):.2f}%), more than "
                                f"--max-error-rate {max_error_rate} allows; see the errors table in "
                                f"{summary.results}", summary)


def _dead_units(snaps) -> int:
    return int(sum(int(np.sum((s.images > 0) & (s.fired == 0))) for s in snaps))


def _load_model(model, weights, random_weights: bool):
    from ..graph import Model

    if isinstance(model, Model):
        return model
    try:
        return Model.load(model, weights=weights, random_weights=random_weights)
    except Exception as exc:  # InvalidModel, ValueError, onnx's DecodeError, ...
        raise MiningError(f"cannot load model {os.fspath(model)!r}: {_one_line(exc)}") from None


def _taps(model, layers):
    try:
        taps = model.taps(layers)
    except ValueError as exc:
        raise MiningError(f"--layers: {exc}") from None
    if not taps:
        raise MiningError(f"model {model.name} has no layers to mine (no ReLU after a Conv); name "
                          "tensors with --layers")
    return taps


def _preprocess(model, draft: bool) -> Preprocess:
    try:
        return Preprocess.from_metadata(model.preprocess, tuple(model.input_size[1:]), draft=draft)
    except (KeyError, TypeError, ValueError) as exc:
        raise MiningError(f"model {model.name}: unusable preprocessing metadata ({_one_line(exc)})") from None


def _manifest(data) -> Manifest:
    try:
        return open_manifest(data)
    except (ValueError, OSError) as exc:
        raise MiningError(f"DATA: {_one_line(exc)}") from None


def _provenance(model) -> dict:
    import onnxruntime
    import PIL

    from .. import __version__

    return {
        "model_name": model.name, "model_path": str(Path(model.path).resolve()) if model.path else None,
        "input_name": model.input_name, "input_size": list(model.input_size),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"cnnviz_fast": __version__, "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
