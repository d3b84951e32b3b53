"""`mine(..., ray=...)`: pass 1 on a Ray cluster, with the single process's results exactly.

The driver (this process) cuts the manifest into shards (`_shards`), puts the model's bytes in the
object store once, starts one worker (`_actor.ShardWorker`) per slot and hands each a shard at a
time. A finished shard's partial state comes back through the object store; the driver records it
with its failed images in results.db in one transaction (`results._shards`), and reduces in shard
order: shards join the leading run (batches 0..next_batch-1) as soon as they follow it, so the
sums are added in the single run's order and `topk` / `unit_stats` equal it bit for bit whatever
order the shards finish in. The leading run is checkpointed as the single process checkpoints
(topk, unit_stats, unit_sums, progress), after which the states it covers are dropped.

Faults: a worker process that dies (SIGKILL, a lost node) is replaced and its shard handed out
again (at most MAX_ATTEMPTS times per shard); a restarted driver folds the recorded states behind
the checkpoint and mines only the shards still missing; a worker that cannot open the model, the
dataset or the device stops the run with its own sentence.
"""
from __future__ import annotations

import collections
import time

from .._signals import graceful_stop, signal_name
from ..errors import MAX_ERROR_RATE, Interrupted, MiningError
from ._pool import Pool
from ._ray import Cluster, parse_address
from ._shards import DEFAULT_SHARD_IMAGES, plan_shards, shard_batches, tar_ends

MAX_ATTEMPTS = 3


def mine(model, data, out, *, ray: str, shard_images: int = DEFAULT_SHARD_IMAGES, layers=None, top_k: int = 9,
         batch_size: int = 32, workers: int | None = None, device: str = "auto", weights=None,
         random_weights: bool = False, overwrite: bool = False, max_error_rate: float | None = MAX_ERROR_RATE,
         checkpoint_images: int = 10_000, checkpoint_seconds: float = 60.0, progress: str = "auto",
         draft: bool = False, heads: str = "auto", threads: int | None = None, limit: int | None = None,
         stream=None, preprocess=None):
    """`cnnviz_fast.mine` on the cluster `ray` names ("local:N", "auto", "ray://host:port"); the
    other arguments as there, `threads` and `workers` per worker. shard_images: images per shard
    (rounded up to whole batches; part of the configuration)."""
    from .._progress import Progress
    from ..data import Manifest
    from ..data.manifest import sample_ids
    from ..mining import driver

    for what, value in (("top_k", top_k), ("batch_size", batch_size), ("workers", workers), ("threads", threads),
                        ("limit", limit), ("shard_images", shard_images)):
        if value is not None and value < 1:
            raise MiningError(f"{what} must be >= 1, got {value}", params=(what,))
    if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
        raise MiningError(f"max_error_rate must be between 0 and 1, got {max_error_rate}", params=("max_error_rate",))
    address = parse_address(ray, MiningError)
    cluster = Cluster(address, MiningError, threads)  # imports Ray (or says how to install it)
    report = Progress(0, errors=0, mode=progress, stream=stream)
    # What can be checked here is, before a cluster is started for it.
    model = driver._load_model(model, weights, random_weights, preprocess)
    taps = driver._taps(model, layers)
    pre = driver._preprocess(model, draft)
    manifest = data if isinstance(data, Manifest) else driver._manifest(data)
    try:
        driver._refuse_out_inside_data(out, manifest, data)
        with cluster:
            pool = Pool(cluster, address, device, threads, workers, heads)
            sample = sample_ids(len(manifest), limit)
            per = shard_batches(shard_images, batch_size)
            config = _config(model, taps, pre, manifest, top_k, batch_size, pool.device, per * batch_size,
                             None if sample is None else limit)
            try:
                return _run(driver, pool, model, taps, pre, manifest, sample, config, out, report,
                            overwrite=overwrite, max_error_rate=max_error_rate, checkpoint_images=checkpoint_images,
                            checkpoint_seconds=checkpoint_seconds)
            finally:
                pool.close()
    finally:
        if not isinstance(data, Manifest):
            manifest.close()


def _config(model, taps, pre, manifest, top_k: int, batch_size: int, dev: str, shard_images: int,
            limit: int | None = None) -> dict:
    """The single process's configuration (mining.driver.run_config) plus the shard size."""
    from ..mining.driver import run_config

    return {**run_config(model, taps, pre, manifest, top_k, batch_size, dev, limit), "shard_images": shard_images}


def _run(driver, pool: Pool, model, taps, pre, manifest, sample, config: dict, out, report, *, overwrite: bool,
         max_error_rate, checkpoint_images: int, checkpoint_seconds: float):
    from ..mining._state import MiningState
    from ..mining.summary import MiningSummary
    from ..results import _shards as records
    from ..results import open_results

    db, resumed = open_results(out, config, driver._provenance(model), manifest, overwrite)
    try:
        driver._check_dataset(db, resumed, config, manifest, report)
        records.ensure_shards_table(db.con)
        k, b = config["top_k"], config["batch_size"]
        # A sample (limit) is mined on its own packed batch grid, as the single process mines it.
        total = len(manifest) if sample is None else len(sample)
        stored = db.run_info().get("shard_images")
        recorded = records.finished_shards(db.con)
        if stored is not None and stored != config["shard_images"] and recorded:
            from ..errors import ConfigMismatch

            raise ConfigMismatch(f"{db.path} holds a cluster run with shards of {stored} images; this run asks "
                                 f"for {config['shard_images']}. Use the same shard size, --overwrite, or "
                                 "--out another folder.")
        prog, errors, snaps = db.resume_state(taps, k) if resumed else (db.progress(), db.error_count(), None)
        elapsed0, checkpoints = float(prog.get("elapsed_s") or 0.0), int(prog["checkpoints"])
        lead = MiningState(taps, k, "cpu")
        summary = MiningSummary(db.out, db.path, config["device"], [t.name for t in taps],
                                sum(t.units for t in taps), total, 0, errors, 0, 0.0, prog["status"])
        if prog["status"] == "finished":
            summary.done = int(prog["images_done"])
            summary.already_finished = True
            summary.dead_units = driver._dead_units(snaps)
            report.message(str(summary))
            driver._check_error_rate(summary, max_error_rate)
            return summary
        if resumed:
            lead.restore(snaps, int(prog["next_batch"]))
        shards = plan_shards(total, b, config["shard_images"], tar_ends(manifest) if sample is None else None)
        # States recorded behind the checkpoint (a driver killed before it checkpointed them).
        waiting: dict[int, tuple[dict, object]] = {}
        for rec in recorded:
            if rec["has_state"] and rec["first_batch"] >= lead.next_batch:
                waiting[rec["first_batch"]] = (records.load_shard_state(db.con, rec["shard"]), rec)
        todo = collections.deque()
        for s in shards:
            if s.stop_batch > lead.next_batch and max(s.first_batch, lead.next_batch) not in waiting:
                todo.append((s.index, max(s.first_batch, lead.next_batch), s.stop_batch))
        done = min(lead.next_batch * b, total) + sum(r["images"] for _, r in waiting.values())
        summary.resumed_from = done if resumed else 0
        if resumed:
            report.message(f"resuming {db.path}: {done:,} of {total:,} images done, {errors:,} errors, "
                           f"{len(todo)} of {len(shards)} shards to mine")
        db.set_run(heads=pool.heads, workers=pool.decode_workers, threads=pool.threads,
                   shard_images=config["shard_images"], cluster=pool.describe())
        report.message(f"cluster: {pool.describe()}; {len(shards)} shards of {config['shard_images']:,} images")
        run = _Reduce(db, records, taps, lead, waiting, checkpoints, elapsed0, b, total,
                      checkpoint_images, checkpoint_seconds)
        run.fold()
        status, t0 = "running", time.monotonic()
        report.reset(total, done, errors)
        report.set_label(pool.label())
        report.update(done, errors, force=True)
        try:
            with graceful_stop() as stop:
                pool.start(model.serialized(), _job(model, config, pre, pool, sample))
                try:
                    for item, result in pool.results(todo, MAX_ATTEMPTS,
                                                     lambda: _tick(report, done + pool.in_hand(), errors, stop)):
                        index, first, stop_batch = item
                        records.record_shard(db.con, index, first, stop_batch, result["images"], result["errors"],
                                             result["state"], result["where"], pool.attempts[item],
                                             result["seconds"])
                        done += result["images"]
                        errors += len(result["errors"])
                        run.add(first, result["state"], result["images"])
                        report.set_label(pool.label())
                        report.update(done + pool.in_hand(), errors)
                        if max_error_rate is not None and errors > max_error_rate * total:
                            status = "stopped"
                            break
                        if stop.signum is not None:
                            break
                    else:
                        status = "finished"
                except _Stopped:
                    pass
                run.checkpoint(status)
            if stop.signum is not None and status == "running":
                report.close()
                raise Interrupted(stop.signum, f"interrupted by {stop.name}: {driver._safe(done, total, errors)} in "
                                  f"{db.path} (finished shards); run the same command again to resume")
        except Interrupted as exc:
            if str(exc):
                raise
            report.close()
            raise Interrupted(exc.signum, f"interrupted by {signal_name(exc.signum)} (twice): the finished shards "
                              f"are in {db.path}; run the same command again to resume") from None
        except KeyboardInterrupt:  # outside the signal handlers' reach (another thread installed them)
            report.close()
            raise Interrupted(2, f"interrupted: the finished shards are in {db.path}; run the same command again "
                              "to resume") from None
        report.update(done, errors, force=True)
        report.close()
        summary.done, summary.errors, summary.status = done, errors, status
        summary.processed = done - summary.resumed_from
        summary.elapsed = time.monotonic() - t0
        summary.dead_units = driver._dead_units(lead.snapshot())
        summary.notes.append(pool.closing_note())
        if status == "stopped":
            summary.notes.append(f"{errors:,} images failed, more than --max-error-rate {max_error_rate} of "
                                 f"{total:,} allows, so mining stopped after {done:,} images")
        report.message(str(summary))
        driver._check_error_rate(summary, max_error_rate)
        return summary
    finally:
        db.close()


class _Stopped(Exception):
    """A signal arrived while the driver waited for shards."""


def _tick(report, done: int, errors: int, stop) -> None:
    report.update(done, errors)
    if stop.signum is not None:
        raise _Stopped


class _Reduce:
    """The leading run, the shard states waiting to join it, and its checkpoints."""

    def __init__(self, db, records, taps, lead, waiting: dict, checkpoints: int, elapsed0: float, b: int,
                 total: int, every_images: int, every_seconds: float):
        self.db, self.records, self.taps, self.lead = db, records, taps, lead
        self.waiting = {first: state for first, (state, _) in waiting.items()}
        self.checkpoints, self.elapsed0, self.b, self.total = checkpoints, elapsed0, b, total
        self.every_images, self.every_seconds = every_images, every_seconds
        self.t0 = self.last = time.monotonic()
        self.since = 0

    def add(self, first_batch: int, state: dict, images: int) -> None:
        self.waiting[first_batch] = state
        self.since += images
        if self.fold() and (self.since >= self.every_images or time.monotonic() - self.last >= self.every_seconds):
            self.checkpoint("running")

    def fold(self) -> bool:
        """Merge the waiting states that follow the leading run, in shard order; True if any did."""
        moved = False
        while self.lead.next_batch in self.waiting:
            self.lead.merge(self.waiting.pop(self.lead.next_batch))
            moved = True
        return moved

    def checkpoint(self, status: str) -> None:
        """The leading run as the single process checkpoints it, then drop the states it covers
        (a crash in between leaves states behind the checkpoint, which a restart ignores)."""
        self.checkpoints += 1
        nb = self.lead.next_batch
        self.db.checkpoint(self.taps, self.lead.snapshot(), [], {
            "status": status, "next_batch": nb, "images_done": min(nb * self.b, self.total),
            "checkpoints": self.checkpoints, "elapsed_s": self.elapsed0 + time.monotonic() - self.t0})
        self.records.release_states(self.db.con, nb)
        self.last, self.since = time.monotonic(), 0


def _job(model, config: dict, pre, pool: Pool, sample) -> dict:
    return {"sample": sample, "model_name": model.name, "layers": config["layers"], "top_k": config["top_k"], "pre": pre,
            "dataset": config["dataset"], "fingerprint": config["dataset_fingerprint"],
            "batch_size": config["batch_size"], "device": pool.device, "heads": pool.heads,
            "threads": pool.threads, "workers": pool.decode_workers}

