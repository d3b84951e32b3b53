"""Resume after SIGKILL (real subprocesses, killed at random moments), the folder lock, and the
configuration check."""
from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cnnviz_fast.cli import main
from cnnviz_fast.mining import ConfigMismatch, ErrorRateExceeded, RunLocked, mine
from _support.mining import query, tables, tiny  # noqa: F401

K = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """480 small JPEGs and three broken files among them (errors must survive resume too)."""
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("resume")
    generate(root, 480, seed=2, size=40)
    for i, name in enumerate(["lines_0/000007x.jpg", "grid/000200x.jpg", "edges/000470x.jpg"]):
        (root / name).write_bytes(b"not a jpeg %d" % i)
    return root


@pytest.fixture(scope="module")
def reference(tiny, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    mine(tiny, dataset, out, top_k=K, batch_size=8, workers=2, progress="none")
    return tables(out / "results.db")


def _args(tiny, dataset, out, *extra):
    return [str(tiny), str(dataset), "--out", str(out), "--top-k", str(K), "--batch-size", "8",
            "--checkpoint-every", "8", "--workers", "2", "--quiet", *extra]


def _images_done(db) -> int:
    if not db.exists():  # connecting would create an empty file in the miner's way
        return 0
    try:
        return int(dict(query(db, "SELECT key, value FROM progress")).get("images_done", 0))
    except Exception:  # the database or its progress table does not exist yet
        return 0


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tiny, dataset, reference, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "out"
    db = out / "results.db"
    cmd = [sys.executable, "-m", "cnnviz_fast", "mine", *_args(tiny, dataset, out)]
    mid_run_kills = 0
    for attempt in range(8):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Kill at a random moment after the run has made some progress past its starting point,
        # so the kill lands mid-run however fast the machine is.
        start = _images_done(db)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _images_done(db) <= start:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        status = dict(query(db, "SELECT key, value FROM progress")) if db.exists() else {}
        if status.get("status") == "running" and 0 < int(status["images_done"]) < 483:
            mid_run_kills += 1
        if mid_run_kills >= 2:
            break
    assert mid_run_kills >= 1, f"no kill landed mid-run (seed {seed})"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert dict(query(db, "SELECT key, value FROM progress"))["status"] == "finished"
    assert tables(db) == reference, f"resumed results differ (seed {seed})"
    assert len(reference["errors"]) == 3


def test_stopped_run_resumes_in_process(tiny, dataset, reference, tmp_path):
    with pytest.raises(ErrorRateExceeded) as info:
        mine(tiny, dataset, tmp_path, top_k=K, batch_size=8, workers=2, progress="none", max_error_rate=0.0)
    assert info.value.summary.status == "stopped" and 0 < info.value.summary.done < 483
    summary = mine(tiny, dataset, tmp_path, top_k=K, batch_size=8, workers=1, progress="none")
    assert summary.status == "finished" and summary.resumed_from == info.value.summary.done
    assert tables(tmp_path / "results.db") == reference


def test_second_miner_fails_at_once_with_a_lock_message(tiny, dataset, tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        t = time.monotonic()
        assert main(["mine", *_args(tiny, dataset, tmp_path)]) == 2
        assert time.monotonic() - t < 30
        err = capsys.readouterr().err
        assert "being mined by another cnnviz-fast process (pid 4242)" in err
        with pytest.raises(RunLocked):
            mine(tiny, dataset, tmp_path, progress="none")
    finally:
        os.close(fd)
    assert main(["mine", *_args(tiny, dataset, tmp_path)]) == 0


def test_lock_against_a_real_second_process(tiny, dataset, tmp_path):
    cmd = [sys.executable, "-m", "cnnviz_fast", "mine", *_args(tiny, dataset, tmp_path)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (tmp_path / "results.db").exists() and first.poll() is None:
            time.sleep(0.01)
        if first.poll() is not None:
            pytest.skip("the first miner finished before the second could start")
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if first.poll() is None:
            assert second.returncode == 2 and "being mined by another" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.wait(timeout=300)


def test_configuration_check(tiny, dataset, tmp_path, capsys):
    assert main(["mine", *_args(tiny, dataset, tmp_path)]) == 0
    before = tables(tmp_path / "results.db")
    assert main(["mine", *_args(tiny, dataset, tmp_path)[:-1]]) == 0  # same configuration: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert tables(tmp_path / "results.db") == before
    args = _args(tiny, dataset, tmp_path)
    args[args.index("--top-k") + 1] = "3"
    assert main(["mine", *args]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "top_k: 4 -> 3" in err and "--overwrite" in err
    assert tables(tmp_path / "results.db") == before
    assert main(["mine", *args + ["--overwrite"]]) == 0
    assert query(tmp_path / "results.db", "SELECT MAX(rank) FROM topk")[0][0] == 2
    with pytest.raises(ConfigMismatch, match="batch_size: 8 -> 16"):
        mine(tiny, dataset, tmp_path, top_k=3, batch_size=16, progress="none")
    with pytest.raises(ConfigMismatch, match="dataset"):
        mine(tiny, dataset / "grid", tmp_path, top_k=3, batch_size=8, progress="none")


def test_foreign_results_file_is_refused(tiny, dataset, tmp_path, capsys):
    (tmp_path / "results.db").write_bytes(b"this is not sqlite" * 100)
    assert main(["mine", *_args(tiny, dataset, tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    shutil.rmtree(tmp_path)
    assert main(["mine", *_args(tiny, dataset, tmp_path)]) == 0
