"""Parallel decoding into reusable batch buffers, with a bounded number of batches in flight.

Batch boundaries are fixed by the manifest: batch b holds image ids [b * B, (b + 1) * B), whatever
the worker count or where a run was resumed, so a resumed run sees exactly the batches an
uninterrupted one does. Each image is one task for a pool of decode threads: Pillow releases the
GIL while it decodes and resamples, and NumPy while it normalises, so threads scale on the cores
without copying decoded images between processes (measured in benchmarks/mining.py). Each task
writes straight into its slot of a batch buffer; images that fail leave their slot and are listed
in `Batch.errors`, and the good rows are packed to the front.

At most `depth` batches are decoded ahead: with depth 1 the next batch is decoded only when it
is asked for (all workers on it while the caller waits), with depth d > 1 up to d - 1 batches are
decoded while the caller works on the current one. Memory is (depth + 1) batch buffers whatever
the dataset size.
"""
from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .decode import DecodeError, Preprocess, decode_into
from .manifest import Manifest


@dataclass
class Batch:
    """One fixed slice of the manifest, decoded.

    `index` is the batch number, `start`/`stop` its id range, `ids` int64 [n] the ids of the
    images that decoded (ascending) and `images` their tensors (float32 [n, 3, H, W] or uint8
    [n, H, W, 3], see BatchLoader; a view of a reused buffer: valid until the next batch is
    requested), `errors` (image_id, path, reason).
    """

    index: int
    start: int
    stop: int
    ids: np.ndarray
    images: np.ndarray
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    buffer: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Images in the slice, decoded or not."""
        return self.stop - self.start


def default_workers() -> int:
    """Decode threads when none are asked for: one per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class BatchLoader:
    """Iterate the manifest's batches from `start_batch` on, decoded by `workers` threads.

    layout "float": images float32 [n, 3, H, W], normalised; "uint8": images uint8 [n, H, W, 3],
    resized and cropped only (4x less to move; the mining graph normalises them).
    `allocate(shape, dtype)` makes a batch buffer (default `numpy.empty`; the CUDA path passes
    page-locked memory). Use as a context manager or call `close()`.
    """

    def __init__(self, manifest: Manifest, pre: Preprocess, batch_size: int, workers: int | None = None,
                 start_batch: int = 0, depth: int = 2, layout: str = "float",
                 allocate: Callable[[tuple[int, ...], type], np.ndarray] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.manifest, self.pre, self.batch_size = manifest, pre, batch_size
        self.workers = workers or default_workers()
        self.start_batch, self.depth = start_batch, max(1, depth)
        self.batches = -(-len(manifest) // batch_size)
        if layout not in ("float", "uint8"):
            raise ValueError(f"layout must be 'float' or 'uint8', not {layout!r}")
        self._tables = pre.tables()
        _, h, w = pre.shape
        shape, dtype = ((batch_size, 3, h, w), np.float32) if layout == "float" else ((batch_size, h, w, 3), np.uint8)
        alloc = allocate or np.empty
        self._free = [alloc(shape, dtype) for _ in range(self.depth + 1)]
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnviz-decode")

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[Batch]:
        pending: collections.deque = collections.deque()
        nxt = self.start_batch
        current: Batch | None = None
        try:
            while True:
                if current is not None:
                    self._free.append(current.buffer)
                    current = None
                while nxt < self.batches and len(pending) < self.depth and self._free:
                    pending.append(self._submit(nxt, self._free.pop()))
                    nxt += 1
                if not pending:
                    return
                current = self._collect(*pending.popleft())
                yield current
        finally:
            for _, _, _, futures in pending:
                for f in futures:
                    f.cancel()

    def _submit(self, index: int, buf: np.ndarray):
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.manifest))
        futures = [self._pool.submit(self._decode_one, i, buf[i - start]) for i in range(start, stop)]
        return index, start, buf, futures

    def _decode_one(self, image_id: int, out: np.ndarray) -> str | None:
        try:
            decode_into(self.manifest.read(image_id), self.pre, out, self._tables)
        except DecodeError as exc:
            return str(exc)
        except Exception as exc:  # a decoder bug must cost one image, not the run
            return f"unexpected {type(exc).__name__} while decoding: {exc}"
        return None

    def _collect(self, index: int, start: int, buf: np.ndarray, futures: list[Future]) -> Batch:
        reasons = [f.result() for f in futures]
        stop = start + len(futures)
        good = [k for k, r in enumerate(reasons) if r is None]
        errors = [(start + k, self.manifest.path(start + k), r) for k, r in enumerate(reasons) if r is not None]
        n = len(good)
        if errors and n:
            buf[:n] = buf[good]
        ids = np.arange(start, stop, dtype=np.int64)[good] if errors else np.arange(start, stop, dtype=np.int64)
        return Batch(index, start, stop, ids, buf[:n], errors, buf)
