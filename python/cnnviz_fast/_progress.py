"""Progress for every long pass (mining, projection): a bar redrawn in place on a terminal (tqdm),
plain lines every `interval` seconds otherwise (logs, CI, nohup: no carriage returns), nothing in
mode "none". The lines' rate and ETA come from a sliding window of recent progress, so a resumed
run or a slow first batch (session warm-up) does not distort them for long."""
from __future__ import annotations

import collections
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
    """Reports `done` of `total` items (`unit`: "images", "projections") and, when `errors` is
    not None, an error count.

    mode: "bar" (tqdm, at most 5 redraws a second), "lines" (one line every `interval` seconds,
    default 15), "none", or "auto" (bar when `stream` is a terminal, else lines). `label` starts
    each line ("mining", "projecting conv1"); change it with `set_label`.
    """

    def __init__(self, total: int, done: int = 0, errors: int | None = None, mode: str = "auto",
                 stream: TextIO | None = None, interval: float | None = None, label: str = "mining",
                 unit: str = "images"):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.total, self.label, self.unit = mode, total, label, unit
        self.interval = interval if interval is not None else (0.2 if mode == "bar" else 15.0)
        self.done, self.errors = done, errors
        self._window = collections.deque([(time.monotonic(), done)])
        self._last_line = 0.0
        self._bar = None

    def reset(self, total: int, done: int = 0, errors: int | None = None) -> None:
        """Start counting again (a resumed run knows its total and starting point only later)."""
        self.close()
        self.total, self.done, self.errors = total, done, errors
        self._window = collections.deque([(time.monotonic(), done)])

    def set_label(self, label: str) -> None:
        self.label = label
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)

    def message(self, text: str) -> None:
        """Print a line of its own (not in mode "none"), keeping the bar below it."""
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        """`n` more items done."""
        self.update(self.done + n, self.errors)

    def update(self, done: int, errors: int | None = None, force: bool = False) -> None:
        """Now `done` items (and `errors`) in all; `force` draws even within the interval."""
        self.done = done
        if errors is not None:
            self.errors = errors
        now = time.monotonic()
        self._window.append((now, done))
        while len(self._window) > 2 and now - self._window[0][0] > 30.0:
            self._window.popleft()
        if self.mode == "bar":
            self._draw(force)
        elif self.mode == "lines" and (force or now - self._last_line >= self.interval):
            self._last_line = now
            print(self._line(), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar's line (a later message starts on a fresh one)."""
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None

    def rate(self) -> float:
        """Items per second over the recent window."""
        (t0, d0), (t1, d1) = self._window[0], self._window[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def _eta(self) -> str:
        rate = self.rate()
        return format_duration((self.total - self.done) / rate) if rate > 0 else "?"

    def _short_unit(self) -> str:
        return "img" if self.unit == "images" else self.unit.rstrip("s")

    def _line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        errors = "" if self.errors is None else f", {self.errors:,} errors"
        return (f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%), "
                f"{self.rate():,.1f} {self._short_unit()}/s, ETA {self._eta()}{errors}")

    def _draw(self, force: bool) -> None:
        if self._bar is None:
            self._bar = _bar_class()(total=self.total, initial=self.done, desc=self.label, file=self.stream,
                                     mininterval=self.interval, miniters=1, dynamic_ncols=True, leave=True,
                                     bar_format="{desc} {percentage:5.1f}%|{bar}| {stats}")
        self._bar.stats = self._stats()
        self._bar.update(self.done - self._bar.n)
        if force:
            self._bar.refresh()

    def _stats(self) -> str:
        errors = "" if self.errors is None else f"  errors {self.errors:,}"
        return (f"{self.done:,}/{self.total:,}  {self.rate():,.1f} {self._short_unit()}/s  "
                f"ETA {self._eta()}{errors}")


_BAR = None


def _bar_class():
    """tqdm with a `{stats}` field: our rate, ETA and error count, the same numbers the lines show
    (tqdm would put its own postfix after a comma). Built on first use: tqdm loads only for a bar."""
    global _BAR
    if _BAR is None:
        from tqdm import tqdm

        class Bar(tqdm):
            stats = ""

            @property
            def format_dict(self):
                return dict(super().format_dict, stats=self.stats)

        _BAR = Bar
    return _BAR
