"""results.db checks itself: every opening (the miner's resume and every reader) verifies the file
before trusting a row of it, and refuses a damaged one with a message that says what to do.

Checked, in one read transaction (so a checkpoint cannot land between two of the reads):
  - SQLite's `PRAGMA quick_check` (page structure, a garbage page; O(file size): 0.18 s for an
    80 MB results.db of 1.28 M images and 23 k top-k rows here, warm cache),
  - the schema version (`PRAGMA user_version`: SCHEMA_VERSION since this check exists, 0 for
    databases written before it, anything newer is refused),
  - the tables every results.db has, the run rows (top_k, layers, batch_size, dataset_images as
    their types demand) and the progress rows (status, next_batch, images_done consistent with
    the batch grid).
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from ..errors import ResultsError
from ._schema import REQUIRED_TABLES, SCHEMA_VERSION

STATUSES = ("running", "stopped", "finished")


def damaged(path: Path, what: str) -> ResultsError:
    """The one message for a results.db that cannot be trusted."""
    return ResultsError(f"{path} is damaged ({what}); mine again into a new folder, or with --overwrite "
                        "(the rows it holds cannot be trusted)")


def sqlite_error(path: Path, exc: sqlite3.Error) -> ResultsError:
    """SQLite's error as ResultsError: "damaged" only for a corrupt file; an I/O problem (a full
    disk: SQLite writes results.db-shm beside the file even to read it) says so instead."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(exc):
        return damaged(path, f"SQLite: {exc}")
    try:
        full = os.statvfs(path.parent).f_bavail == 0
    except OSError:
        full = False
    why = "the disk is full" if full else "is the disk full, or the folder not writable?"
    return ResultsError(f"cannot read {path} ({exc}): {why} SQLite writes {path.name}-shm beside it even to read; "
                        "free some space (or fix the permissions) and run the command again")


def verify(con: sqlite3.Connection, path: Path, *, full: bool = True) -> None:
    """Raise ResultsError when `con` (inside the caller's read transaction) is not a sound
    results.db. full=False skips quick_check (a connection checked a moment ago)."""
    try:
        _verify(con, path, full)
    except sqlite3.DatabaseError as exc:
        raise sqlite_error(path, exc) from None


def _verify(con: sqlite3.Connection, path: Path, full: bool) -> None:
    if full:
        rows = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise damaged(path, f"quick_check: {'; '.join(map(str, rows))}")
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{path} was written by a newer cnnviz_fast (schema version {version}, this one reads "
                           f"up to {SCHEMA_VERSION}): upgrade cnnviz_fast to read it")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = set(REQUIRED_TABLES) - tables
    if missing:
        raise ResultsError(f"{path} is not a cnnviz_fast results database (no table {', '.join(sorted(missing))})")
    run = {}
    for key, value in con.execute("SELECT key, value FROM run"):
        try:
            run[key] = json.loads(value)
        except (TypeError, ValueError):
            run[key] = value
    _check_run(run, path)
    if "progress" in tables:
        _check_progress(dict(con.execute("SELECT key, value FROM progress")), run, path)


def _is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_run(run: dict, path: Path) -> None:
    for key, low in (("top_k", 1), ("batch_size", 1), ("dataset_images", 0)):
        if key in run and not _is_int(run[key], low):
            raise damaged(path, f"run.{key} is {run[key]!r}")
    layers = run.get("layers")
    if layers is not None:
        ok = isinstance(layers, list) and all(
            isinstance(d, dict) and isinstance(d.get("name"), str) and _is_int(d.get("units"), 1) for d in layers)
        if not ok:
            raise damaged(path, "run.layers is not a list of layers with a name and a unit count")


def _check_progress(prog: dict, run: dict, path: Path) -> None:
    if not prog:  # written by another tool: no resume bookkeeping
        return
    status = prog.get("status")
    if status not in STATUSES:
        raise damaged(path, f"progress.status is {status!r}")
    values = {}
    for key in ("next_batch", "images_done", "checkpoints"):
        v = prog.get(key)
        if not _is_int(v):
            raise damaged(path, f"progress.{key} is {v!r}")
        values[key] = v
    batch, images, limit = run.get("batch_size"), run.get("dataset_images"), run.get("limit")
    if _is_int(batch, 1) and _is_int(images):
        total = min(images, limit) if _is_int(limit, 1) else images
        # images_done counts whole batches of the grid: all of them full but maybe the last.
        expect = min(values["next_batch"] * batch, total)
        if values["images_done"] != expect or values["next_batch"] * batch - batch >= max(total, 1):
            raise damaged(path, f"progress says {values['images_done']:,} images done at batch "
                                f"{values['next_batch']:,} of {batch} images, of {total:,}")
