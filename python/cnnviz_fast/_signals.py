"""SIGINT and SIGTERM during the long passes, one policy for `mine` and `project`.

`graceful_stop()`: the first signal only asks the pass to stop (`stop.signum`), so the miner ends
the batch it is in, writes a checkpoint and exits (no image that was done is lost); a second
signal raises `errors.Interrupted` at once. `interrupting()`: every signal raises Interrupted at
once (the projection pass, whose finished layers are already on disk). Both are no-ops outside
the main thread (Python delivers signals there only) and restore the previous handlers.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """What a `graceful_stop()` block has received: `signum` is None until a signal arrives."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def graceful_stop():
    stop = Stop()

    def handler(signum, _frame):
        if stop.signum is not None:
            raise Interrupted(signum)
        stop.signum = signum

    with _handlers(handler):
        yield stop


@contextlib.contextmanager
def interrupting():
    def handler(signum, _frame):
        raise Interrupted(signum)

    with _handlers(handler):
        yield


@contextlib.contextmanager
def _handlers(handler):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def signal_name(signum: int) -> str:
    """"SIGINT" for 2, and so on."""
    return signal.Signals(signum).name
