"""Parallel decoding into reusable batch buffers, with a bounded number of batches in flight.

Batch boundaries are fixed by the manifest: batch b holds image ids [b * B, (b + 1) * B), whatever
the worker count, where a run was resumed or which ids were asked for, so a resumed run, or a
worker mining a range or a list of ids, sees exactly the batches (or the parts of them it asked
for) an uninterrupted full run does. `packed=True` drops that grid for callers that only want the
images (the projection pass): consecutive runs of `batch_size` requested ids. Each image is one
task for a pool of decode threads: Pillow releases the GIL while it decodes and resamples, and
NumPy while it normalises, so threads scale on the cores without copying decoded images between
processes (measured in benchmarks/mining.py). Each task writes straight into its slot of a batch
buffer; images that fail leave their slot and are listed in `Batch.errors`, and the good rows are
packed to the front.

At most `depth` batches are decoded ahead: with depth 1 the next batch is decoded only when it
is asked for (all workers on it while the caller waits), with depth d > 1 up to d - 1 batches are
decoded while the caller works on the current one. Memory is (depth + 1) batch buffers whatever
the dataset size.

The decode threads are daemons of the loader's own small pool, not a ThreadPoolExecutor's: an
executor's shutdown, and the interpreter's exit, wait for every running task, so one read stuck in
the kernel (a hung network mount) would hang Ctrl-C forever. `close()` cancels what has not
started, waits up to `STOP_WAIT_S` for what is running, then leaves a stuck thread behind (it
writes nowhere once the loader is closed) and says so on stderr.
"""
from __future__ import annotations

import collections
import queue
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from .decode import DecodeError, Preprocess, decode_into
from .manifest import Manifest

STOP_WAIT_S = 5.0  # how long close() waits for running decodes before leaving stuck threads behind


@dataclass
class Batch:
    """One fixed slice of the manifest, decoded.

    `index` is the batch number, `start`/`stop` its id range (the grid's, or the first and one
    past the last requested id when packed), `size` how many images were read (decoded or
    failed; stop - start unless only some ids of the slice were asked for), `ids` int64 [n] the
    ids of the images that decoded (ascending) and `images` their tensors (float32 [n, 3, H, W]
    or uint8 [n, H, W, 3], see BatchLoader; a view of a reused buffer: valid until the next batch
    is requested), `errors` (image_id, path, reason).
    """

    index: int
    start: int
    stop: int
    ids: np.ndarray
    images: np.ndarray
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    buffer: np.ndarray | None = field(default=None, repr=False)
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = self.stop - self.start


def default_workers() -> int:
    """Decode threads when none are asked for: one per core the process may use."""
    from ..runtime import cores

    return cores()


class BatchLoader:
    """Iterate batches of the manifest from `start_batch` on, decoded by `workers` threads.

    ids: None (the whole manifest), a `range` of image ids (step 1), or a sequence of image ids
    (sorted, duplicates dropped); batches follow the manifest's grid (see the module docstring)
    and those with no requested id are left out, unless `packed`. `batch_numbers()` lists the
    batch numbers the loader yields. layout "float": images float32 [n, 3, H, W], normalised;
    "uint8": images uint8 [n, H, W, 3], resized and cropped only, channels in the model's order
    (4x less to move; the mining graph normalises them). `allocate(shape, dtype)` makes a batch
    buffer (default `numpy.empty`; the CUDA path passes page-locked memory). Use as a context
    manager or call `close()`.
    """

    def __init__(self, manifest: Manifest, pre: Preprocess, batch_size: int, workers: int | None = None,
                 start_batch: int = 0, depth: int = 2, layout: str = "float",
                 allocate: Callable[[tuple[int, ...], type], np.ndarray] | None = None,
                 ids: range | Sequence[int] | np.ndarray | None = None, packed: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.manifest, self.pre, self.batch_size = manifest, pre, batch_size
        self.workers = workers or default_workers()
        self.start_batch, self.depth = start_batch, max(1, depth)
        self._ids = _requested(ids, len(manifest))
        if packed and isinstance(self._ids, range):
            self._ids = np.arange(self._ids.start, self._ids.stop, dtype=np.int64)
        self._packed = packed
        if layout not in ("float", "uint8"):
            raise ValueError(f"layout must be 'float' or 'uint8', not {layout!r}")
        self._tables = pre.tables()
        _, h, w = pre.shape
        shape, dtype = ((batch_size, 3, h, w), np.float32) if layout == "float" else ((batch_size, h, w, 3), np.uint8)
        alloc = allocate or np.empty
        self._free = [alloc(shape, dtype) for _ in range(self.depth + 1)]
        self._closed = False
        self._plan_it: Iterator | None = None
        self._pending: collections.deque = collections.deque()
        self._current: Batch | None = None
        self._pool = _DecodePool(self.workers, "cnnviz-decode")

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the decode threads (see the module docstring); idempotent."""
        if self._closed:
            return
        self._closed = True
        stuck = self._pool.shutdown(STOP_WAIT_S)
        if stuck:
            print(f"cnnviz-fast: {stuck} decode thread{'s' if stuck > 1 else ''} still blocked reading a file "
                  f"after {STOP_WAIT_S:g} s (a hung file system?); left behind", file=sys.stderr)

    def batch_numbers(self) -> list[int]:
        """The numbers of the batches this loader yields, in order."""
        return [index for index, _, _, _ in self._plan()]

    def _plan(self) -> Iterator[tuple[int, int, int, np.ndarray | None]]:
        """(batch number, start, stop, requested ids or None for all of [start, stop))."""
        b, n = self.batch_size, len(self.manifest)
        if isinstance(self._ids, range):
            lo, hi = self._ids.start, self._ids.stop
            if hi <= lo:
                return
            for index in range(max(lo // b, self.start_batch), -(-hi // b)):
                start, stop = index * b, min((index + 1) * b, n)
                if lo <= start and stop <= hi:
                    yield index, start, stop, None
                else:
                    yield index, start, stop, np.arange(max(start, lo), min(stop, hi), dtype=np.int64)
            return
        ids = self._ids
        if self._packed:
            for index in range(self.start_batch, -(-len(ids) // b)):
                chunk = ids[index * b:(index + 1) * b]
                yield index, int(chunk[0]), int(chunk[-1]) + 1, chunk
            return
        numbers = ids // b
        cuts = np.flatnonzero(np.diff(numbers)) + 1
        for chunk in np.split(ids, cuts) if len(ids) else []:
            index = int(chunk[0]) // b
            if index >= self.start_batch:
                yield index, index * b, min((index + 1) * b, n), chunk

    def __iter__(self) -> Iterator[Batch]:
        with warnings.catch_warnings():
            # Images over Pillow's bomb limit are refused with a recorded reason; its warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow's notes on damaged files ("Tag data larger than file") would flood the terminal;
            # an image that cannot be used gets its reason in the errors instead.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            yield from self._batches(self._plan())

    def _batches(self, plan) -> Iterator[Batch]:
        self._plan_it, self._pending, self._current = plan, collections.deque(), None
        try:
            while True:
                self._give_back()
                self._top_up()
                if not self._pending:
                    return
                self._current = self._collect(*self._pending.popleft())
                yield self._current
        finally:
            for *_, futures in self._pending:
                for f in futures:
                    f.cancel()

    def release(self, batch: Batch) -> None:
        """The caller is done with `batch.images` (the last batch yielded): its buffer goes back now
        and the decoding of the next batch starts, instead of when the next batch is asked for.
        The miner calls it once the forward pass has read the images, so that decoding overlaps
        the single-threaded work that follows (the top-k update, a checkpoint)."""
        if batch is not None and batch is self._current:
            self._give_back()
            self._top_up()

    def _give_back(self) -> None:
        if self._current is not None:
            self._free.append(self._current.buffer)
            self._current = None

    def _top_up(self) -> None:
        while len(self._pending) < self.depth and self._free:
            item = next(self._plan_it, None)
            if item is None:
                break
            self._pending.append(self._submit(*item, self._free.pop()))

    def _submit(self, index: int, start: int, stop: int, wanted: np.ndarray | None, buf: np.ndarray):
        ids = np.arange(start, stop, dtype=np.int64) if wanted is None else wanted
        futures = [self._pool.submit(self._decode_one, i, buf[row]) for row, i in enumerate(ids.tolist())]
        return index, start, stop, ids, buf, futures

    def _decode_one(self, image_id: int, out: np.ndarray) -> str | None:
        try:
            data = self.manifest.read(image_id)
            if self._closed:  # a read that outlived close(): its buffer may be gone
                return "loader closed"
            decode_into(data, self.pre, out, self._tables)
        except DecodeError as exc:
            return str(exc)
        except Exception as exc:  # a decoder bug must cost one image, not the run
            return f"unexpected {type(exc).__name__} while decoding: {exc}"
        return None

    def _collect(self, index: int, start: int, stop: int, ids: np.ndarray, buf: np.ndarray,
                 futures: list[Future]) -> Batch:
        reasons = [_result(f) for f in futures]
        good = [k for k, r in enumerate(reasons) if r is None]
        errors = [(int(ids[k]), self.manifest.path(int(ids[k])), r) for k, r in enumerate(reasons) if r is not None]
        n = len(good)
        if errors and n:
            buf[:n] = buf[good]
        return Batch(index, start, stop, ids[good] if errors else ids, buf[:n], errors, buf, len(ids))


def _requested(ids, n: int) -> range | np.ndarray:
    """The ids asked for: a range within [0, n), or sorted unique int64 ids, each checked."""
    if ids is None:
        return range(n)
    if isinstance(ids, range):
        if ids.step != 1:
            raise ValueError(f"an id range must have step 1, got {ids!r}")
        if ids.start < 0 or ids.stop > n:
            raise ValueError(f"id range {ids.start}..{ids.stop} is outside the manifest's 0..{n}")
        return range(ids.start, max(ids.start, ids.stop))
    arr = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
    if len(arr) and (arr[0] < 0 or arr[-1] >= n):
        raise ValueError(f"image ids must be in 0..{n - 1}, got {int(arr[0])}..{int(arr[-1])}")
    return arr


def _result(future: Future):
    """future.result(), waiting in slices: a signal caught by another thread (ONNX Runtime's) does
    not interrupt a wait, but the main thread runs Python's handlers between two slices."""
    while True:
        try:
            return future.result(timeout=0.25)
        except FutureTimeout:
            continue


class _DecodePool:
    """`workers` daemon threads running submitted calls; `submit` returns a `Future`."""

    def __init__(self, workers: int, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        # A signal the kernel hands to a decode thread would not wake the main thread's wait;
        # blocked here, SIGINT and SIGTERM go to the main thread, which raises or stops.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while True:
            task = self._tasks.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

    def shutdown(self, wait_s: float) -> int:
        """Cancel the queued calls, let the threads finish their current one for up to `wait_s`
        seconds in all; the number of threads still running."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + wait_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)
