"""Progress for long runs: a one-line bar on a terminal, plain periodic lines otherwise (logs, CI,
nohup), nothing when quiet. Rate and ETA come from a sliding window of recent progress, so a
resumed run or a slow first batch (session warm-up) does not distort them for long."""
from __future__ import annotations

import collections
import shutil
import sys
import time
from typing import TextIO

MODES = ("auto", "bar", "lines", "none")


def format_duration(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Reports `done` of `total` images and the error count.

    mode: "bar" (redrawn in place, at most 5 times a second), "lines" (one line every `interval`
    seconds, default 15), "none", or "auto" (bar when `stream` is a terminal, else lines).
    """

    def __init__(self, total: int, done: int = 0, errors: int = 0, mode: str = "auto",
                 stream: TextIO | None = None, interval: float | None = None, label: str = "mining"):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total, self.label = mode, total, label
        self.interval = interval if interval is not None else (0.2 if mode == "bar" else 15.0)
        self.done, self.errors = done, errors
        self._start = time.monotonic()
        self._window = collections.deque([(self._start, done)])
        self._last_draw = 0.0
        self._drawn = False

    def message(self, text: str) -> None:
        """Print a line of its own (not in mode "none"), keeping the bar below it."""
        if self.mode == "none":
            return
        self._clear()
        print(text, file=self.stream, flush=True)
        if self._drawn:
            self._draw()

    def update(self, done: int, errors: int, force: bool = False) -> None:
        self.done, self.errors = done, errors
        now = time.monotonic()
        self._window.append((now, done))
        while len(self._window) > 2 and now - self._window[0][0] > 30.0:
            self._window.popleft()
        if self.mode == "none" or (not force and now - self._last_draw < self.interval):
            return
        self._last_draw = now
        if self.mode == "bar":
            self._draw()
        else:
            print(self._line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.mode == "bar" and self._drawn:
            self._draw()
            print(file=self.stream, flush=True)
            self._drawn = False

    def rate(self) -> float:
        """Images per second over the recent window."""
        (t0, d0), (t1, d1) = self._window[0], self._window[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def _eta(self) -> str:
        rate = self.rate()
        return format_duration((self.total - self.done) / rate) if rate > 0 else "?"

    def _stats(self) -> str:
        return f"{self.rate():,.1f} img/s  ETA {self._eta()}  errors {self.errors:,}"

    def _line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.label}: {self.done:,}/{self.total:,} images ({pct:.1f}%), {self.rate():,.1f} img/s, "
                f"ETA {self._eta()}, {self.errors:,} errors")

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        frac = self.done / self.total if self.total else 1.0
        head = f"{self.label} {100 * frac:5.1f}% "
        tail = f" {self.done:,}/{self.total:,}  {self._stats()}"
        bar_w = max(10, width - len(head) - len(tail) - 3)
        fill = int(frac * bar_w)
        line = f"{head}|{'#' * fill}{'.' * (bar_w - fill)}|{tail}"
        self.stream.write("\r" + line[:width - 1])
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self.mode == "bar" and self._drawn:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * (width - 1) + "\r")
