"""The worker of a cluster run: one process (a Ray actor) holding one ONNX Runtime session, mining
whole shards into partial states.

Plain Python here; `_mine` makes it a Ray actor class with the resources it needs (`num_gpus=1`
on a GPU, `num_cpus=threads` on the CPU). The constructor never raises: a worker that cannot load
the model, see the dataset or open the device keeps the reason, and `ready()` / `mine_shard()`
return it, so the driver can stop the run with that sentence instead of a Ray traceback.
"""
from __future__ import annotations

import os
import socket
import threading
import time


class ShardWorker:
    """Mines shards of one run. `job` (a dict the driver builds): model_name, layers (the run's
    config layers), top_k, pre (a Preprocess), dataset (Manifest.spec), fingerprint, batch_size,
    device ("cpu" | "cuda"), heads, threads (ONNX Runtime), workers (decode threads), sample (the
    ids of a `limit` sample, or None)."""

    def __init__(self, model_bytes: bytes, job: dict):
        self.job = job
        self.where = f"{socket.gethostname()} pid {os.getpid()}"
        self.failure: str | None = None
        self._done = 0  # images of the current shard read so far (read by `progress`, another thread)
        self._lock = threading.Lock()
        self.session = self.manifest = None
        try:
            self._open(model_bytes)
        except Exception as exc:  # every failure becomes the worker's message (see module docstring)
            text = " ".join(str(exc).split()) or type(exc).__name__
            self.failure = text if isinstance(exc, _known_errors()) else f"{type(exc).__name__}: {text}"

    def _open(self, model_bytes: bytes) -> None:
        import onnx

        from ..data import open_manifest
        from ..graph import Model
        from ..mining._session import ForwardSession
        from ..runtime import resolve_device

        job = self.job
        try:
            model = Model.from_proto(onnx.load_model_from_string(model_bytes), name=job["model_name"])
        except Exception as exc:  # onnx's DecodeError, InvalidModel, ...
            raise _Refused(f"cannot load the model the driver sent: {' '.join(str(exc).split())}") from None
        taps = model.taps([layer["name"] for layer in job["layers"]])
        seen = [{"name": t.name, "tensor": t.tensor, "kind": t.kind, "units": t.units,
                 "map_shape": list(t.map_shape)} for t in taps]
        if seen != job["layers"]:
            raise _Refused(f"the model's layers differ on this worker: {seen} vs {job['layers']}")
        self.taps = taps
        try:
            self.manifest = open_manifest(job["dataset"])
        except (ValueError, OSError) as exc:
            raise _Refused(f"cannot open the dataset here ({exc}); every worker reads the images by "
                               "path, so the cluster must share that storage at the same path") from None
        if self.manifest.fingerprint() != job["fingerprint"]:
            raise _Refused(f"the dataset looks different here ({len(self.manifest):,} images): every "
                               "worker must see the same files at the same path")
        target = resolve_device(job["device"], option="--device")
        self.session = ForwardSession(model, taps, target, heads=job["heads"], threads=job["threads"],
                                      uint8_input=job["pre"], batch_size=job["batch_size"])

    def ready(self) -> dict:
        """{"failure": None or the reason, "where": host and pid, "threads": ORT's intra-op threads}."""
        threads = None
        if self.session is not None:
            threads = self.session.session.get_session_options().intra_op_num_threads
        return {"failure": self.failure, "where": self.where, "threads": threads}

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> int:
        """Images of the shard in hand read so far."""
        with self._lock:
            return self._done

    def mine_shard(self, first_batch: int, stop_batch: int) -> dict:
        """Mine batches first_batch..stop_batch-1 of the manifest's grid: {"state": the partial
        state_dict, "images", "errors", "seconds", "where"}, or {"failure": reason}."""
        if self.failure is not None:
            return {"failure": self.failure, "where": self.where}
        from ..data import BatchLoader
        from ..mining._loop import mine_batches
        from ..mining._state import MiningState

        job, t0 = self.job, time.monotonic()
        b, n = job["batch_size"], len(self.manifest)
        state = MiningState(self.taps, job["top_k"], self.session.device)
        images, errors = 0, []
        with self._lock:
            self._done = 0
        # On the CPU ORT's threads fill this worker's cores: decode each batch just before it is
        # needed (as the single process does, see mining.driver); a GPU worker decodes ahead.
        depth = 1 if self.session.device == "cpu" else 3
        sample = job.get("sample")
        if sample is None:
            ids, packed, start = range(first_batch * b, min(stop_batch * b, n)), False, 0
        else:  # a sample's own packed grid (batch i = sample[i*B:(i+1)*B]), numbered as the single process does
            ids, packed, start = sample[:stop_batch * b], True, first_batch
        loader = BatchLoader(self.manifest, job["pre"], b, job["workers"], start_batch=start, depth=depth,
                             layout="uint8", allocate=self.session.allocate, ids=ids, packed=packed)
        with loader:
            for batch in mine_batches(self.session, loader, state):
                images += batch.size
                errors.extend(batch.errors)
                with self._lock:
                    self._done = images
        return {"state": state.state_dict(), "images": images, "errors": errors,
                "seconds": time.monotonic() - t0, "where": self.where}


class _Refused(Exception):
    """This worker cannot take part; the message says why."""


def _known_errors() -> tuple[type, ...]:
    """Errors whose message already says what is wrong (no class name needed in front)."""
    from ..errors import CnnvizError

    return (CnnvizError, _Refused)
