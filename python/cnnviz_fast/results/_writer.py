"""The miner's side of results.db (tables in `_schema.py`), written by checkpoints.

Every checkpoint is one transaction that rewrites topk, unit_stats and unit_sums and appends the
errors of the batches it covers, so the file always holds the state after some whole batch.
The folder is locked (`cnnviz_fast._dirlock`: a flock on the folder itself, which deleting
DIR/.lock cannot defeat) for as long as a `ResultsDB` is open. A resumed database is verified
first (`_check.verify`), and the resume reads progress, errors and state in one transaction.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._dirlock import FolderBusy, lock_folder, unlock_folder
from ..errors import ConfigMismatch, MiningError, ResultsError, RunLocked
from ._check import damaged, sqlite_error, verify
from ._schema import DB_NAME, SCHEMA, SCHEMA_VERSION, encode_value
from ._snapshot import LayerSnapshot
from . import _hist

# The run keys that make two runs "the same configuration" (resume only continues such a run).
CONFIG_KEYS = ("model_sha256", "layers", "top_k", "preprocess", "dataset", "dataset_images",
               "dataset_fingerprint", "batch_size", "device", "limit")


class ResultsDB:
    """An output folder's results.db, opened for one miner (locked). Use `open_results`."""

    def __init__(self, out: Path, lock_fd: int, con: sqlite3.Connection):
        self.out, self.path = out, out / DB_NAME
        self._lock_fd, self.con = lock_fd, con

    def progress(self) -> dict:
        return {k: v for k, v in self.con.execute("SELECT key, value FROM progress")}

    def run_info(self) -> dict:
        return {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM run")}

    def error_count(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM errors").fetchone()[0]

    def resume_state(self, layers: Sequence, k: int) -> tuple[dict, int, list[LayerSnapshot]]:
        """(progress, error count, state) of the last checkpoint, read in ONE transaction: a
        checkpoint (of a process that got past the lock some other way) cannot land between them."""
        with _reading(self.con, self.path):
            return self.progress(), self.error_count(), self.load_state(layers, k)

    def load_state(self, layers: Sequence, k: int) -> list[LayerSnapshot]:
        """The state the last checkpoint wrote, as host arrays (for MiningState.restore)."""
        snaps = []
        for layer in layers:
            u, w = layer.units, layer.map_shape[1]
            snap = LayerSnapshot(np.full((u, k), -np.inf, np.float32), np.full((u, k), -1, np.int64),
                                 np.full((u, k), -1, np.int32), np.zeros(u, np.int64), np.zeros(u, np.float64),
                                 np.zeros(u, np.int64), np.full(u, -np.inf, np.float32))
            for unit, rank, value, image_id, y, x in self.con.execute(
                    "SELECT unit, rank, value, image_id, y, x FROM topk WHERE layer = ?", (layer.name,)):
                snap.values[unit, rank], snap.image_ids[unit, rank] = value, image_id
                snap.positions[unit, rank] = y * w + x
            for unit, images, mx in self.con.execute(
                    "SELECT unit, images, max FROM unit_stats WHERE layer = ?", (layer.name,)):
                snap.images[unit] = images
                snap.max[unit] = -np.inf if mx is None else mx
            for unit, s, fired in self.con.execute(
                    "SELECT unit, sum_max, fired FROM unit_sums WHERE layer = ?", (layer.name,)):
                snap.sum_max[unit], snap.fired[unit] = s, fired
            snap.hist = _hist.read(self.con, layer.name, u)
            snaps.append(snap)
        return snaps

    def checkpoint(self, layers: Sequence, snaps: Sequence[LayerSnapshot],
                   errors: Iterable[tuple[int, str, str]], progress: dict) -> None:
        """Write the state after a whole batch as one transaction."""
        con = self.con
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM topk")
            con.execute("DELETE FROM unit_stats")
            con.execute("DELETE FROM unit_sums")
            for layer, snap in zip(layers, snaps):
                con.executemany("INSERT INTO topk VALUES (?, ?, ?, ?, ?, ?, ?)", _topk_rows(layer, snap))
                con.executemany("INSERT INTO unit_stats VALUES (?, ?, ?, ?, ?, ?)", _stats_rows(layer, snap))
                con.executemany("INSERT INTO unit_sums VALUES (?, ?, ?, ?)",
                                zip([layer.name] * layer.units, range(layer.units), snap.sum_max.tolist(),
                                    snap.fired.tolist()))
            _hist.write(con, layers, [snap.hist for snap in snaps])
            con.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?)", errors)
            progress = dict(progress, updated=time.time())
            con.executemany("INSERT OR REPLACE INTO progress VALUES (?, ?)", progress.items())
            con.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(con)
            raise _write_error(self.path, exc) from None
        except BaseException:
            _rollback(con)
            raise

    def set_run(self, **values) -> None:
        with _transaction(self.con, self.path):
            self.con.executemany("INSERT OR REPLACE INTO run VALUES (?, ?)",
                                 [(k, encode_value(v)) for k, v in values.items()])

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            unlock_folder(self._lock_fd)


def open_results(out: str | os.PathLike, config: dict, provenance: dict, manifest,
                 overwrite: bool = False) -> tuple[ResultsDB, bool]:
    """Lock `out` and open its results.db for this configuration: (db, resumed).

    A fresh or overwritten folder gets a new run (schema, run keys, images, progress: one
    transaction). A folder holding a run of the same configuration is resumed (or, finished, left
    as it is: progress()["status"] says so). Another configuration raises ConfigMismatch unless
    `overwrite`; another miner holding the lock raises RunLocked.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(out)
    try:
        path = out / DB_NAME
        if overwrite:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        con = _connect(path)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            con.close()
            raise sqlite_error(path, exc) from None
        if tables and not {"run", "progress", "topk"} <= tables:
            con.close()
            raise ConfigMismatch(f"{path} is not a cnnviz_fast results database; use --overwrite to replace "
                                 "it, or --out another folder")
        db = ResultsDB(out, lock_fd, con)
        if tables and _has_status(con, path):
            try:
                with _reading(con, path):
                    verify(con, path)
                    _check_config(path, db.run_info(), config)
            except (ConfigMismatch, ResultsError):
                con.close()
                raise
            return db, True
        if tables:  # a creation that never committed cannot exist (one transaction); be safe anyway
            with _transaction(con):
                for t in tables:
                    con.execute(f'DROP TABLE "{t}"')
        _create(con, config, provenance, manifest)
        return db, False
    except BaseException:
        unlock_folder(lock_fd)
        raise


def _has_status(con: sqlite3.Connection, path: Path) -> bool:
    try:
        return con.execute("SELECT 1 FROM progress WHERE key = 'status'").fetchone() is not None
    except sqlite3.DatabaseError as exc:
        raise sqlite_error(path, exc) from None


def _create(con: sqlite3.Connection, config: dict, provenance: dict, manifest) -> None:
    with _transaction(con):
        # executescript() would commit on its own: run the statements one by one inside the transaction.
        for statement in SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.executemany("INSERT INTO run VALUES (?, ?)",
                        [(k, encode_value(v)) for k, v in {**provenance, **config}.items()])
        con.executemany("INSERT INTO images VALUES (?, ?)", manifest.paths())
        con.executemany("INSERT INTO progress VALUES (?, ?)",
                        [("status", "running"), ("next_batch", 0), ("images_done", 0), ("checkpoints", 0),
                         ("elapsed_s", 0.0), ("updated", time.time())])


def _check_config(path: Path, stored: dict, config: dict) -> None:
    diffs = []
    for key in CONFIG_KEYS:
        old, new = stored.get(key), json.loads(encode_value(config.get(key)))
        if old != new:
            diffs.append(f"{key}: {_short(old)} -> {_short(new)}")
    if diffs:
        raise ConfigMismatch(f"{path} holds a run with another configuration ({'; '.join(diffs)}). "
                             "Use --overwrite to replace it, or --out another folder.")


def _short(value) -> str:
    text = encode_value(value)
    if isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0]:
        text = ",".join(str(v["name"]) for v in value)
    return text if len(text) <= 60 else text[:57] + "..."


def _topk_rows(layer, snap: LayerSnapshot):
    units, ranks = np.nonzero(snap.image_ids >= 0)
    w = layer.map_shape[1]
    pos = snap.positions[units, ranks].astype(np.int64)
    return zip([layer.name] * len(units), units.tolist(), ranks.tolist(),
               snap.values[units, ranks].astype(np.float64).tolist(), snap.image_ids[units, ranks].tolist(),
               (pos // w).tolist(), (pos % w).tolist())


def _stats_rows(layer, snap: LayerSnapshot):
    n = snap.images
    seen = n > 0
    safe = np.where(seen, n, 1)
    mean = np.where(seen, snap.sum_max / safe, np.nan)
    rate = np.where(seen, snap.fired / safe, np.nan)
    mx = np.where(seen, snap.max.astype(np.float64), np.nan)
    for unit in range(layer.units):
        if seen[unit]:
            yield layer.name, unit, int(n[unit]), float(mean[unit]), float(rate[unit]), float(mx[unit])
        else:
            yield layer.name, unit, 0, None, None, None


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise ConfigMismatch(f"{path} is not a readable SQLite database ({exc}); use --overwrite to "
                             "replace it, or --out another folder") from None
    return con


class _transaction:
    def __init__(self, con: sqlite3.Connection, path: Path | None = None):
        self.con, self.path = con, path

    def __enter__(self):
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _write_error(self.path, exc) from None

    def __exit__(self, exc_type, exc, _tb):
        if exc_type:
            _rollback(self.con)
            if issubclass(exc_type, sqlite3.OperationalError):
                raise _write_error(self.path, exc) from None
            return False
        try:
            self.con.execute("COMMIT")
        except sqlite3.OperationalError as err:
            _rollback(self.con)
            raise _write_error(self.path, err) from None
        return False


class _reading:
    """A read transaction: the reads inside it see one committed state (WAL snapshot)."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self.con, self.path = con, path

    def __enter__(self):
        self.con.execute("BEGIN")

    def __exit__(self, exc_type, exc, _tb):
        _rollback(self.con)
        if exc_type is not None and issubclass(exc_type, sqlite3.DatabaseError):
            raise sqlite_error(self.path, exc) from None
        if exc_type is not None and issubclass(exc_type, (KeyError, ValueError, TypeError)) \
                and not issubclass(exc_type, ResultsError):
            raise damaged(self.path, f"{exc_type.__name__}: {exc}") from None
        return False


def _rollback(con: sqlite3.Connection) -> None:
    # SQLite may have rolled back on its own (a full disk, an I/O error, a signal just after
    # COMMIT finished): ROLLBACK's own "no transaction is active" would then hide the real cause.
    try:
        if con.in_transaction:
            con.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass


def _write_error(path: Path | None, exc: sqlite3.OperationalError) -> MiningError:
    """A write that SQLite refused, as a message with the real cause and what to do."""
    where = path or "results.db"
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc):
        return MiningError(f"the disk is full: cannot write {where} ({exc}); results up to the last checkpoint "
                           "are kept: free some space and run the same command again to resume")
    return MiningError(f"cannot write {where}: {exc}")


def _lock(out: Path) -> int:
    try:
        return lock_folder(out, "mining")
    except FolderBusy as busy:
        doing = "being projected (`cnnviz-fast project`)" if busy.purpose == "projecting" else "being mined"
        raise RunLocked(f"{out} is {doing} by another cnnviz-fast process{busy.who}; wait for it to "
                        "finish, or use another --out") from None
    except OSError as exc:
        raise MiningError(f"cannot lock {out / '.lock'}: {exc}") from None
