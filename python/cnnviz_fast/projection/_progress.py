"""A progress line for the projection pass: a bar redrawn in place on a terminal, a plain line
every few seconds otherwise, nothing when quiet."""
from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from ..mining.progress import format_duration


class Progress:
    """Counts `done` of `total` projections; mode "auto" | "bar" | "lines" | "none"."""

    def __init__(self, total: int, mode: str = "auto", stream: TextIO | None = None, interval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress mode must be auto, bar, lines or none, not {mode!r}")
        self.mode, self.total, self.done, self.layer = mode, total, 0, ""
        self.interval = interval if interval is not None else (0.2 if mode == "bar" else 15.0)
        self._t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._drawn:
            self.stream.write("\r" + " " * (_width() - 1) + "\r")
        print(text, file=self.stream, flush=True)
        if self._drawn:
            self._draw()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.mode == "none" or now - self._last < self.interval:
            return
        self._last = now
        if self.mode == "bar":
            self._draw()
        else:
            print(self._text(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.mode == "bar" and self._drawn:
            self._draw()
            print(file=self.stream, flush=True)
            self._drawn = False

    def _text(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"projecting {self.layer}: {self.done:,}/{self.total:,} projections, {rate:,.1f}/s, "
                f"ETA {eta}")

    def _draw(self) -> None:
        width = _width()
        frac = self.done / self.total if self.total else 1.0
        tail = " " + self._text()
        bar_w = max(10, min(40, width - len(tail) - 10))
        fill = int(frac * bar_w)
        self.stream.write(f"\r{100 * frac:5.1f}% |{'#' * fill}{'.' * (bar_w - fill)}|{tail}"[:width - 1])
        self.stream.flush()
        self._drawn = True


def _width() -> int:
    return shutil.get_terminal_size((100, 20)).columns
