"""A full disk (issue 11), on a real small tmpfs (mounting needs root; skipped otherwise): mining
says the disk is full (not "cannot rollback"), `project` fails with a message instead of a SIGBUS
(exit 135), `report` leaves no temporary folder behind; results.db stays consistent and the same
commands succeed once there is space."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid

import pytest

from _support.mining import tiny  # noqa: F401

N = 120


@pytest.fixture()
def tmpfs(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _resize(where, size: str):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _fill(where, margin: int = 64 << 10):
    """Fill the file system but `margin` bytes; returns the filler file."""
    filler = where / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 1 << 12):
            try:
                while True:
                    os.write(fd, b"\1" * chunk)
            except OSError:
                pass
        os.ftruncate(fd, max(os.fstat(fd).st_size - margin, 0))
    finally:
        os.close(fd)
    return filler


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("disk") / "data"
    generate(root, N, seed=6, size=36)
    return root


def cnnviz(*args):
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_mining_on_a_full_disk_says_so_and_resumes_when_there_is_space(tiny, data, tmpfs):  # noqa: F811
    out = tmpfs / "out"
    args = ["mine", tiny, data, "--out", out, "--top-k", "3", "--batch-size", "4", "--checkpoint-every", "4",
            "--workers", "1", "--quiet"]
    _resize(tmpfs, "160k")
    p = cnnviz(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "the disk is full" in p.stderr and "cannot rollback" not in p.stderr, p.stderr
    _resize(tmpfs, "32m")
    p = cnnviz(*args)
    assert p.returncode == 0, p.stderr
    con = sqlite3.connect(out / "results.db")
    try:
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert set(con.execute("SELECT images FROM unit_stats")) == {(N,)}
    finally:
        con.close()


def test_project_and_report_on_a_full_disk_fail_cleanly_then_succeed(tiny, data, tmpfs):  # noqa: F811
    out = tmpfs / "out"
    _resize(tmpfs, "32m")
    p = cnnviz("mine", tiny, data, "--out", out, "--top-k", "3", "--batch-size", "8", "--workers", "1", "--quiet")
    assert p.returncode == 0, p.stderr
    filler = _fill(tmpfs)
    for command in ("project", "report"):
        p = cnnviz(command, out, "--quiet")
        assert p.returncode == 2, (command, p.returncode, p.stderr)      # not 135 (SIGBUS) nor 1 (traceback)
        assert "Traceback" not in p.stderr and "disk is full" in p.stderr, (command, p.stderr)
        left = [n for n in os.listdir(out) if n.startswith(".report.")]
        assert not left, left
    filler.unlink()
    for command in ("project", "report"):
        p = cnnviz(command, out, "--quiet")
        assert p.returncode == 0, (command, p.stderr)
    assert (out / "report" / "index.html").is_file()
