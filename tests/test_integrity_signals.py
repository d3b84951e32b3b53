"""SIGINT and SIGTERM keep the work done (issue 11), in real subprocesses: the miner ends its batch,
writes a checkpoint and exits 130 / 143 with one line saying how many images are safe (also before
its first regular checkpoint), and the run resumes to the whole result; `project` interrupted
keeps its finished layers and says so in one line."""
from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cnnviz_fast.mining import mine
from _support.mining import tiny  # noqa: F401

# The CLI with the pass slowed down and a flag file written once it is well under way, so the test
# signals a process that is mid-run (deterministically: no guessing how fast this machine is).
SLOW_MINE = """
import pathlib, sys, time
import cnnviz_fast.mining.driver as d
flag, orig = pathlib.Path(sys.argv[1]), d.mine_batches
def slow(*a, **k):
    for i, batch in enumerate(orig(*a, **k)):
        if i == 3:
            flag.write_text("go")
        time.sleep(0.05)
        yield batch
d.mine_batches = slow
from cnnviz_fast.cli import main
sys.exit(main(sys.argv[2:]))
"""
SLOW_PROJECT = """
import pathlib, sys, time
import cnnviz_fast.projection._pass as p
flag, orig = pathlib.Path(sys.argv[1]), p.project_layer
def slow(job, *a, **k):
    if flag.exists():           # the first layer is done: hang in the second until signalled
        flag.write_text("go")
        time.sleep(300)
    marker = orig(job, *a, **k)
    flag.write_text("one")
    return marker
p.project_layer = slow
from cnnviz_fast.cli import main
sys.exit(main(sys.argv[2:]))
"""
N = 160


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("signals") / "data"
    generate(root, N, seed=5, size=36)
    return root


def _signal_when_flagged(script: str, flag, args, signum, want="go"):
    proc = subprocess.Popen([sys.executable, "-c", script, str(flag), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if flag.exists() and flag.read_text() == want:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out + err


def _progress(db):
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT key, value FROM progress"))
    finally:
        con.close()


def _mine_args(tiny, data, out):  # noqa: F811
    # Checkpoints far apart: without the signal's checkpoint, nothing would be kept.
    return ["mine", tiny, data, "--out", out, "--top-k", "3", "--batch-size", "4", "--workers", "1",
            "--threads", "1", "--checkpoint-every", "100000", "--checkpoint-seconds", "100000", "--quiet"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_first_checkpoint_keeps_the_images_done(tiny, data, tmp_path, signum, status):  # noqa: F811
    out = tmp_path / "out"
    code, text = _signal_when_flagged(SLOW_MINE, tmp_path / "flag", _mine_args(tiny, data, out), signum)
    assert code == status, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "interrupted" in line]
    assert len(lines) == 1, text
    m = re.search(rf"interrupted by {signal.Signals(signum).name}: ([\d,]+) of {N} images are safe", lines[0])
    assert m and "run the same command again to resume" in lines[0], text
    safe = int(m.group(1).replace(",", ""))
    prog = _progress(out / "results.db")
    assert 16 <= safe < N and int(prog["images_done"]) == safe and prog["status"] == "running"
    summary = mine(tiny, data, out, top_k=3, batch_size=4, workers=1, progress="none")
    assert summary.status == "finished" and summary.resumed_from == safe
    con = sqlite3.connect(out / "results.db")
    try:
        assert set(con.execute("SELECT images FROM unit_stats")) == {(N,)}
    finally:
        con.close()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_projection_keeps_its_finished_layers(tiny, data, tmp_path, signum, status):  # noqa: F811
    out = tmp_path / "out"
    mine(tiny, data, out, top_k=2, batch_size=8, workers=1, progress="none")
    flag = tmp_path / "flag"
    flag.unlink(missing_ok=True)
    code, text = _signal_when_flagged(SLOW_PROJECT, flag, ["project", out, "--quiet", "--device", "cpu"], signum)
    assert code == status and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and f"interrupted by {signal.Signals(signum).name}: 1 layer(s) done and kept" in lines[0], text
    assert f"cnnviz-fast project {out}" in lines[0]
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "project", str(out), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "already done:" in p.stdout, p.stdout + p.stderr
    assert not list((out / "projections").glob("*/.*.npy")), "scratch files were left behind"
