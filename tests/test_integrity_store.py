"""results.db checks itself (issue 11): the folder lock cannot be defeated by deleting DIR/.lock,
resume reads progress and state in one transaction, a damaged database (a garbage page, edited
progress, a newer schema, broken run rows, a missing table) is refused by the resume and by every
reader with a message and exit status 2, never sqlite3's own error or a traceback."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from cnnviz_fast._dirlock import lock_folder, unlock_folder
from cnnviz_fast.errors import ResultsError, RunLocked
from cnnviz_fast.mining import mine
from cnnviz_fast.results import Results, open_results
from cnnviz_fast.results._schema import SCHEMA_VERSION
from _support.mining import tiny  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("integrity") / "data"
    generate(root, 40, seed=3, size=36)
    return root


@pytest.fixture()
def finished(tiny, data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    mine(tiny, data, out, top_k=3, batch_size=8, workers=1, progress="none")
    return out


def cnnviz(*args):
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _sql(db, *statements):
    con = sqlite3.connect(db)
    try:
        for s in statements:
            con.execute(s)
        con.commit()
    finally:
        con.close()


def test_deleting_the_lock_file_lets_no_second_miner_in(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = lock_folder(out, "mining")
    try:
        (out / ".lock").unlink()          # what a user (or a cleanup script) did mid-run
        with pytest.raises(RunLocked, match="being mined"):
            open_results(out, {}, {}, None)
    finally:
        unlock_folder(fd)
    db, _ = open_results(out, {"top_k": 1}, {}, _NoImages())  # released: the folder can be had again
    db.close()


def test_mine_says_when_project_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = lock_folder(out, "projecting")
    try:
        with pytest.raises(RunLocked, match=r"being projected .* \(pid %d\)" % os.getpid()):
            open_results(out, {}, {}, None)
    finally:
        unlock_folder(fd)


class _NoImages:
    def paths(self):
        return iter(())


def test_resume_reads_progress_errors_and_state_in_one_transaction(tiny, data, finished, monkeypatch):  # noqa: F811
    """A checkpoint committed by another connection between the reads must not be seen: the state
    read belongs to the progress read."""
    from cnnviz_fast.mining.driver import _taps
    from cnnviz_fast.graph import Model
    from cnnviz_fast.results import ResultsDB

    _sql(finished / "results.db", "UPDATE progress SET value = 'running' WHERE key = 'status'")
    taps = _taps(Model.load(tiny), None)
    db, resumed = open_results(finished, _config(finished), {}, None)
    try:
        assert resumed
        original = ResultsDB.load_state

        def load_state_after_a_foreign_checkpoint(self, layers, k):
            _sql(finished / "results.db", "DELETE FROM topk", "UPDATE unit_stats SET images = 0")
            return original(self, layers, k)

        monkeypatch.setattr(ResultsDB, "load_state", load_state_after_a_foreign_checkpoint)
        prog, errors, snaps = db.resume_state(taps, 3)
    finally:
        db.close()
    assert prog["images_done"] == 40 and errors == 0
    assert all((s.image_ids >= 0).all() and (s.images == 40).all() for s in snaps)


def test_the_driver_resumes_through_the_one_transaction(tiny, data, finished, monkeypatch):  # noqa: F811
    from cnnviz_fast.results import ResultsDB

    calls = []
    original = ResultsDB.resume_state
    monkeypatch.setattr(ResultsDB, "resume_state", lambda self, *a: calls.append(a) or original(self, *a))
    mine(tiny, data, finished, top_k=3, batch_size=8, workers=1, progress="none")
    assert len(calls) == 1


def _config(out):
    from cnnviz_fast.results._writer import CONFIG_KEYS

    with Results(out) as res:
        return {k: res.run.get(k) for k in CONFIG_KEYS}


def _garbage_page(db):
    size = os.path.getsize(db)
    page = 4096
    assert size >= 4 * page
    with open(db, "r+b") as f:
        f.seek(2 * page)
        f.write(os.urandom(page))


DAMAGES = {
    "garbage page": _garbage_page,
    "next_batch edited": lambda db: _sql(db, "UPDATE progress SET value = 999 WHERE key = 'next_batch'"),
    "images_done edited": lambda db: _sql(db, "UPDATE progress SET value = 'lots' WHERE key = 'images_done'"),
    "status edited": lambda db: _sql(db, "UPDATE progress SET value = 'bogus' WHERE key = 'status'"),
    "layers not JSON": lambda db: _sql(db, "UPDATE run SET value = '{not json' WHERE key = 'layers'"),
    "layers without names": lambda db: _sql(db, "UPDATE run SET value = '[{\"units\": 8}]' WHERE key = 'layers'"),
    "top_k a string": lambda db: _sql(db, "UPDATE run SET value = '\"nine\"' WHERE key = 'top_k'"),
    "a table dropped": lambda db: _sql(db, "DROP TABLE unit_stats"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_database_is_refused_by_resume_and_readers(tiny, data, finished, damage):  # noqa: F811
    db = finished / "results.db"
    _sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    DAMAGES[damage](db)
    with pytest.raises(ResultsError) as err:
        Results(finished).close()
    assert "results.db" in str(err.value) and ("mine again" in str(err.value) or "not a cnnviz_fast" in str(err.value))
    for args in (["mine", tiny, data, "--out", finished, "--top-k", "3", "--batch-size", "8", "--quiet"],
                 ["project", finished, "--quiet"], ["report", finished, "--quiet"]):
        p = cnnviz(*args)
        assert p.returncode == 2, (damage, args[0], p.stderr)
        assert "Traceback" not in p.stderr and "results.db" in p.stderr, (damage, args[0], p.stderr)


def test_a_newer_schema_is_refused_and_ours_is_recorded(finished):
    db = finished / "results.db"
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    _sql(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ResultsError, match="newer cnnviz_fast"):
        Results(finished)


def test_a_database_written_before_schema_versions_still_reads(finished):
    _sql(finished / "results.db", "PRAGMA user_version = 0")
    with Results(finished) as res:
        assert res.status == "finished" and res.counts()["images"] == 40
