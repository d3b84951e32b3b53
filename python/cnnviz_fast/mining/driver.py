"""`mine()`: pass 1 of cnnviz_fast, streaming a dataset through the mining graph into results.db.

The driver orchestrates: it checks the arguments, opens results.db (resuming an unfinished run),
runs the loop of `_loop.mine_batches` over the batches still to do, checkpoints, enforces the error
budget, reports progress and returns the summary. The loop itself knows none of that.
"""
from __future__ import annotations

import copy
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from ..data import BatchLoader, Manifest, Preprocess, default_workers, open_manifest
from ..data.manifest import readable_name, sample_ids
from ..errors import MAX_ERROR_RATE, Interrupted
from .._progress import Progress
from .._signals import graceful_stop, signal_name
from ._loop import mine_batches
from ._session import ForwardSession
from ._state import MiningState
from .errors import ErrorRateExceeded, MiningError
from ..errors import ConfigMismatch, DeviceUnavailable
from ..results import ResultsDB, open_results
from ..runtime import resolve_device
from .summary import MiningSummary


def mine(model, data, out: str | os.PathLike, *, layers: str | Sequence[str] | None = None, top_k: int = 9,
         batch_size: int = 32, workers: int | None = None, device: str = "auto", weights=None,
         random_weights: bool = False, overwrite: bool = False,
         max_error_rate: float | None = MAX_ERROR_RATE,
         checkpoint_images: int = 10_000, checkpoint_seconds: float = 60.0, progress: str = "auto",
         draft: bool = False, heads: str = "auto", threads: int | None = None, limit: int | None = None,
         stream: TextIO | None = None, ray: str | None = None, shard_images: int | None = None,
         preprocess=None) -> MiningSummary:
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
    (default MAX_ERROR_RATE, 0.5; None: no limit) of the images failed, MiningError subclasses for
    every problem a user can fix. SIGINT or SIGTERM ends the batch in progress, writes a
    checkpoint and raises `errors.Interrupted` (a second signal: at once, the last checkpoint
    kept); its message says how many images are safe.

    ray: run on a Ray cluster instead ("local:N", "auto", "ray://host:port"; `cnnviz_fast.cluster`),
    with the manifest cut into shards of `shard_images` (default 4096); the results are the same.
    """
    # Messages name the parameters as the API spells them (params=): the CLI shows its flags instead.
    for what, value in (("top_k", top_k), ("batch_size", batch_size), ("workers", workers), ("threads", threads),
                        ("limit", limit)):
        if value is not None and value < 1:
            raise MiningError(f"{what} must be >= 1, got {value}", params=(what,))
    if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
        raise MiningError(f"max_error_rate must be between 0 and 1, got {max_error_rate}", params=("max_error_rate",))
    if ray is not None:
        from ..cluster import DEFAULT_SHARD_IMAGES, mine as cluster_mine

        return cluster_mine(model, data, out, ray=ray, shard_images=shard_images or DEFAULT_SHARD_IMAGES,
                            layers=layers, top_k=top_k, batch_size=batch_size, workers=workers, device=device,
                            weights=weights, random_weights=random_weights, overwrite=overwrite,
                            max_error_rate=max_error_rate, checkpoint_images=checkpoint_images,
                            checkpoint_seconds=checkpoint_seconds, progress=progress, draft=draft, heads=heads,
                            threads=threads, limit=limit, stream=stream, preprocess=preprocess)
    report = Progress(0, errors=0, mode=progress, stream=stream)
    try:
        target = resolve_device(device)
    except DeviceUnavailable as exc:  # it reads "device='cuda' cannot be used: ..."
        exc.params = (f"device={(device or 'auto').lower()!r}",)
        raise
    dev, dev_note = target.name, target.reason
    model = _load_model(model, weights, random_weights, preprocess)
    taps = _taps(model, layers)
    pre = _preprocess(model, draft)
    _check_memory(model, taps, batch_size, top_k)  # before a batch or the top-k store is allocated
    manifest = data if isinstance(data, Manifest) else _manifest(data)
    _refuse_out_inside_data(out, manifest, data)
    workers = workers or default_workers()
    sample = sample_ids(len(manifest), limit)
    config = run_config(model, taps, pre, manifest, top_k, batch_size, dev, None if sample is None else limit)
    db, resumed = open_results(out, config, _provenance(model), manifest, overwrite)
    try:
        _check_dataset(db, resumed, config, manifest, report)
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
    # Progress, error count and state in one read transaction (they must be of one checkpoint).
    prog, errors, snaps = db.resume_state(taps, k) if resumed else (db.progress(), db.error_count(), None)
    next_batch, done = int(prog["next_batch"]), int(prog["images_done"])
    elapsed0, checkpoints = float(prog.get("elapsed_s") or 0.0), int(prog["checkpoints"])
    summary = MiningSummary(db.out, db.path, dev, [t.name for t in taps], sum(t.units for t in taps), total,
                            done, errors, 0, 0.0, prog["status"], resumed_from=done if resumed else 0)
    if prog["status"] == "finished":
        summary.already_finished = True
        summary.dead_units = _dead_units(snaps)
        report.message(str(summary))
        _check_error_rate(summary, max_error_rate)
        return summary
    if resumed:
        state.restore(snaps, next_batch)
        report.message(f"resuming {db.path}: {done:,} of {total:,} images done, {errors:,} errors")
    # Batches travel as uint8 crops and the graph normalises them (see _optimize.uint8_input_graph).
    session = ForwardSession(model, taps, dev, heads=heads, threads=threads, uint8_input=pre, batch_size=batch_size)
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
    last_ckpt, since_ckpt, saved = t0, 0, done

    def checkpoint(status_now: str) -> None:
        nonlocal checkpoints, last_ckpt, since_ckpt, saved
        checkpoints += 1
        db.checkpoint(taps, state.snapshot(), pending, {
            "status": status_now, "next_batch": state.next_batch, "images_done": done,
            "checkpoints": checkpoints, "elapsed_s": elapsed0 + time.monotonic() - t0})
        pending.clear()
        last_ckpt, since_ckpt, saved = time.monotonic(), 0, done

    # A sample is mined as consecutive runs of batch_size of its ids (packed): its own batch grid,
    # fixed by the sample, so resume and the exact sums work on it as on the whole manifest.
    loader = BatchLoader(manifest, pre, batch_size, workers, start_batch=next_batch, depth=depth, layout="uint8",
                         allocate=session.allocate, ids=sample, packed=sample is not None)
    if session.pinned_note:
        summary.notes.append(session.pinned_note)
        report.message(f"note: {session.pinned_note}")
    try:
        with graceful_stop() as stop:
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
                    if stop.signum is not None:
                        break
                    if since_ckpt >= checkpoint_images or time.monotonic() - last_ckpt >= checkpoint_seconds:
                        checkpoint("running")
            if status != "stopped" and stop.signum is None:
                status = "finished"
            checkpoint(status)
        if stop.signum is not None and status == "running":
            report.close()
            raise Interrupted(stop.signum, f"interrupted by {stop.name}: {_safe(saved, total, errors)} in {db.path}; "
                              "run the same command again to resume")
    except Interrupted as exc:
        if str(exc):
            raise
        report.close()
        raise Interrupted(exc.signum, f"interrupted by {signal_name(exc.signum)} (twice): {_safe(saved, total)} "
                          f"in {db.path} (the last checkpoint); run the same command again to resume") from None
    except KeyboardInterrupt:  # outside the signal handlers' reach (another thread installed them)
        report.close()
        raise Interrupted(2, f"interrupted: {_safe(saved, total)} in {db.path} (the last checkpoint); "
                          "run the same command again to resume") from None
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


def _safe(images: int, total: int, errors: int | None = None) -> str:
    """"1,234 of 5,000 images are safe" (none when nothing was checkpointed yet)."""
    failed = f" ({errors:,} of them could not be used)" if errors else ""
    return (f"{images:,} of {total:,} images are safe{failed}" if images else
            f"no images are safe yet (0 of {total:,})")


def _check_error_rate(summary: MiningSummary, max_error_rate: float | None) -> None:
    if max_error_rate is None:
        return
    if summary.status == "stopped" or summary.errors > max_error_rate * summary.images:
        exc = ErrorRateExceeded(f"{summary.errors:,} of {summary.images:,} images failed "
                                f"({100 * summary.errors / max(summary.images, 1):.2f}%), more than "
                                f"max_error_rate {max_error_rate} allows; see the errors table in "
                                f"{summary.results}", summary)
        exc.params = ("max_error_rate",)
        raise exc


def _dead_units(snaps) -> int:
    return int(sum(int(np.sum((s.images > 0) & (s.fired == 0))) for s in snaps))


def _load_model(model, weights, random_weights: bool, preprocess=None):
    from ..graph import Model
    from ..graph.model import ZOO_NAMES

    if preprocess is not None:
        from .._metadata import parse_preprocess

        try:
            preprocess = parse_preprocess(preprocess)
        except ValueError as exc:
            raise MiningError(f"preprocess: {_one_line(exc)}", params=("preprocess",)) from None
    if isinstance(model, Model):
        if preprocess is None:
            return model
        # The caller's Model stays as it is: the override applies to a shallow copy (checked by _preprocess).
        model = copy.copy(model)
        model.preprocess = {**model.preprocess, **preprocess}
        return model
    name = os.fspath(model)
    zoo = name[4:] if name.startswith("zoo:") else name
    if zoo.lower() in ZOO_NAMES and not os.path.isfile(name) and weights is None and not random_weights:
        raise MiningError(f"zoo model {zoo!r} needs weights: weights=FILE (a local .pth/.safetensors state dict) "
                          "or random_weights=True (an untrained model)", params=("weights=FILE", "random_weights=True"))
    try:
        return Model.load(model, weights=weights, random_weights=random_weights, preprocess=preprocess)
    except Exception as exc:  # InvalidModel, ValueError, onnx's DecodeError, ...
        raise MiningError(f"cannot load model {os.fspath(model)!r}: {_one_line(exc)}") from None


def _taps(model, layers):
    try:
        taps = model.taps(layers)
    except ValueError as exc:
        raise MiningError(f"layers: {exc}", params=("layers",)) from None
    if not taps:
        # The model says it in CLI words (--layers); the API names the parameter.
        raise MiningError(model.no_layers_message().replace("--layers", "layers"), params=("layers",))
    return taps


def _preprocess(model, draft: bool) -> Preprocess:
    try:
        return Preprocess.from_metadata(model.preprocess, tuple(model.input_size[1:]), draft=draft)
    except (KeyError, TypeError, ValueError) as exc:
        raise MiningError(f"model {model.name}: unusable preprocessing metadata ({_one_line(exc)})") from None


def _check_memory(model, taps, batch_size: int, top_k: int) -> None:
    """Refuse a declared input whose batch, or layers whose top-k store, cannot fit in memory (a
    fully convolutional model exported at 100000x100000, a weight declaring 2^40 channels would
    otherwise try to allocate it), naming the size."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 64 << 30
    c, h, w = (int(v) for v in model.input_size)
    batch = batch_size * c * h * w * 4          # one batch as float32, the graph's input
    units = sum(int(t.units) for t in taps)
    store = units * (top_k * 16 + 64)           # top-k values, ids, positions; per-unit statistics
    for need, what, fix in ((batch, f"a {c}x{h}x{w} input: one batch of {batch_size}", "export the model with a "
                             "smaller input size, or lower batch_size"),
                            (store, f"{units:,} units to mine: their top-{top_k} store", "choose fewer layers, or "
                             "lower top_k")):
        if need > memory // 4:
            raise MiningError(f"model {model.name} declares {what} needs {need / 2**30:,.1f} GiB, more than a "
                              f"quarter of this machine's {memory / 2**30:,.1f} GiB of memory; {fix}",
                              params=("batch_size", "top_k"))


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


def _refuse_out_inside_data(out, manifest: Manifest, data) -> None:
    """OUT inside a DATA folder would put the report's and projections' pictures among the images."""
    if manifest.kind != "folder":
        return
    root, where = Path(manifest.spec["root"]).resolve(), Path(out).resolve()
    if where == root or root in where.parents:
        if not isinstance(data, Manifest):  # opened here
            manifest.close()
        raise MiningError(f"the output folder {readable_name(str(where))} is inside the dataset folder "
                          f"{readable_name(str(root))}: the pictures written there would be mined as data; "
                          "choose an output folder outside it")


def _check_dataset(db: ResultsDB, resumed: bool, config: dict, manifest: Manifest, report: Progress) -> None:
    """Record the dataset's warnings with the run; refuse to resume over files that changed."""
    if manifest.warnings:
        db.set_run(dataset_warnings=manifest.warnings)
    stored = db.run_info().get("dataset_content") if resumed else None
    if stored is None or stored == config["dataset_content"]:
        return  # a fresh run, or one recorded before content fingerprints
    what = ("files of the dataset were rewritten since this run was mined (same names, but another size "
            "or modification time)")
    if db.progress().get("status") == "finished":
        report.message(f"note: {what}; the results describe the files as they were; mine again with "
                       "overwrite=True to see the new ones")
        return
    raise ConfigMismatch(f"{db.path}: {what}, so the images mined so far and those still to mine would "
                         "not be of one dataset. Restore the files, or mine again from the start with "
                         "overwrite=True (or into another output folder)", params=("overwrite=True",))


def run_config(model, taps, pre: Preprocess, manifest: Manifest, top_k: int, batch_size: int, dev: str,
               limit: int | None) -> dict:
    """The run's configuration as results.db stores it (the cluster miner adds its shard size)."""
    return {
        "model_sha256": model.sha256, "top_k": top_k, "preprocess": pre.to_dict(),
        "layers": [{"name": t.name, "tensor": t.tensor, "kind": t.kind, "units": t.units,
                    "map_shape": list(t.map_shape)} for t in taps],
        "dataset": manifest.spec, "dataset_images": len(manifest), "dataset_fingerprint": manifest.fingerprint(),
        "batch_size": batch_size, "device": dev, "limit": limit,
        # Stored with the run, checked by _check_dataset on resume (not a CONFIG_KEYS entry: its own message).
        "dataset_content": manifest.content_fingerprint(),
    }
