"""The one progress helper of every pass: plain lines off a terminal, a bar on one, nothing in
mode "none"."""
from __future__ import annotations

import io

import pytest

from cnnviz_fast._progress import Progress, format_duration


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_when_not_a_terminal():
    s = io.StringIO()
    p = Progress(2000, errors=0, stream=s, interval=3600)
    assert p.mode == "lines"
    p.update(0, 0, force=True)
    for k in range(1, 20):
        p.update(100 * k, k // 4)  # within the interval: no line
    p.update(2000, 5, force=True)
    p.message("a note")
    p.close()
    lines = s.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in s.getvalue()
    assert lines[0].startswith("mining: 0/2,000 images (0.0%), ") and lines[0].endswith(", 0 errors")
    assert lines[1].startswith("mining: 2,000/2,000 images (100.0%), ") and " img/s, ETA " in lines[1]
    assert lines[1].endswith(", 5 errors") and lines[2] == "a note"


def test_lines_of_a_pass_without_errors_and_a_changing_label():
    s = io.StringIO()
    p = Progress(50, mode="lines", stream=s, interval=0, label="projecting", unit="projections")
    p.set_label("projecting conv2")
    p.advance(20)
    p.advance(30)
    out = s.getvalue().splitlines()
    assert out[0].startswith("projecting conv2: 20/50 projections (40.0%), ") and "projection/s" in out[0]
    assert out[-1].startswith("projecting conv2: 50/50 projections (100.0%)") and "error" not in s.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO, Tty])
def test_none_prints_nothing(stream):
    s = stream()
    p = Progress(10, errors=0, mode="none", stream=s, interval=0)
    p.message("hello")
    p.update(5, 1, force=True)
    p.advance(5)
    p.reset(20, 3, 0)
    p.close()
    assert s.getvalue() == "" and p.done == 3 and p.total == 20


def test_bar_on_a_terminal_keeps_messages_above_it():
    s = Tty()
    p = Progress(1000, stream=s, interval=0)
    assert p.mode == "bar"
    for k in range(1, 11):
        p.update(100 * k, k // 3)
    p.message("a note")
    p.close()
    text = s.getvalue()
    assert "\r" in text and "a note\n" in text and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("mining 100.0%|") and "1,000/1,000" in last and "img/s" in last
    assert "ETA" in last and last.endswith("errors 3")


def test_reset_restarts_the_rate_window_and_modes_are_checked():
    p = Progress(0, errors=0, mode="lines", stream=io.StringIO())
    p.reset(100, 40, 2)
    assert (p.total, p.done, p.errors, p.rate()) == (100, 40, 2, 0.0)
    with pytest.raises(ValueError, match="progress mode"):
        Progress(1, mode="fancy")
    assert [format_duration(x) for x in (0, 59.4, 61, 3600 * 2 + 5)] == ["0:00", "0:59", "1:01", "2:00:05"]
