"""results.db's record of the shards a cluster run has finished (`cnnviz_fast.cluster`).

One table beside the miner's own, created on first use by the cluster driver:

  shards(shard, first_batch, stop_batch, images, errors, worker, attempts, seconds, state)

A row is one finished shard (batches first_batch..stop_batch-1 of the manifest's batch grid),
written with that shard's rows of `errors` in ONE transaction (`record_shard`). `state` holds the
shard's partial mining state until the driver's checkpoint of the leading run (topk, unit_stats,
unit_sums, progress.next_batch: the state of batches 0..next_batch-1) covers it; then it is
cleared (`release_states`) and the row stays as the record of who mined what. A driver that
restarts folds the states it finds behind the checkpoint and mines only the shards that have none.

The state is stored as an uncompressed NumPy .npz of plain arrays (`encode_state` /
`decode_state`), never a pickle: opening a results.db must not run code.
"""
from __future__ import annotations

import io
import json
import sqlite3
from typing import Iterable

import numpy as np

SHARDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards(shard INTEGER PRIMARY KEY, first_batch INTEGER NOT NULL,
                                  stop_batch INTEGER NOT NULL, images INTEGER NOT NULL, errors INTEGER NOT NULL,
                                  worker TEXT, attempts INTEGER NOT NULL, seconds REAL, state BLOB)
"""


def ensure_shards_table(con: sqlite3.Connection) -> None:
    """Create the shards table if this results.db has none yet."""
    con.execute(SHARDS_SCHEMA)


def record_shard(con: sqlite3.Connection, shard: int, first_batch: int, stop_batch: int, images: int,
                 errors: Iterable[tuple[int, str, str]], state: dict, worker: str, attempts: int,
                 seconds: float) -> None:
    """Write one finished shard, its failed images and its partial state as one transaction."""
    errors = list(errors)
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (shard, first_batch, stop_batch, images, len(errors), worker, attempts, seconds,
                     encode_state(state)))
        con.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?)", errors)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def finished_shards(con: sqlite3.Connection) -> list[dict]:
    """Every recorded shard (without its state), by shard number."""
    rows = con.execute("SELECT shard, first_batch, stop_batch, images, errors, worker, attempts, seconds, "
                       "state IS NOT NULL FROM shards ORDER BY shard").fetchall()
    keys = ("shard", "first_batch", "stop_batch", "images", "errors", "worker", "attempts", "seconds", "has_state")
    return [dict(zip(keys, r)) for r in rows]


def load_shard_state(con: sqlite3.Connection, shard: int) -> dict | None:
    """The partial state recorded for `shard`, or None when it was released (or never recorded)."""
    row = con.execute("SELECT state FROM shards WHERE shard = ?", (shard,)).fetchone()
    return None if row is None or row[0] is None else decode_state(row[0])


def release_states(con: sqlite3.Connection, next_batch: int) -> None:
    """Drop the states of the shards that the leading checkpoint (batches < next_batch) covers."""
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute("UPDATE shards SET state = NULL WHERE stop_batch <= ? AND state IS NOT NULL", (next_batch,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def encode_state(state: dict) -> bytes:
    """A `MiningState.state_dict()` as .npz bytes: its scalars and lists in a JSON header array,
    each layer's arrays (whichever the state has) under "<layer index>/<key>"."""
    header = {"k": int(state["k"]), "next_batch": int(state["next_batch"]),
              "pending_batches": [int(b) for b in state["pending_batches"]],
              "pending_empty": [int(b) for b in state["pending_empty"]],
              "layers": [d["name"] for d in state["layers"]]}
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    for i, d in enumerate(state["layers"]):
        for key, value in d.items():
            if key != "name":
                arrays[f"{i}/{key}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_state(blob: bytes) -> dict:
    """The inverse of `encode_state`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
        layers = [{"name": name} for name in header["layers"]]
        for entry in z.files:
            index, _, key = entry.partition("/")
            if key:
                layers[int(index)][key] = z[entry]
    return {"k": header["k"], "next_batch": header["next_batch"], "pending_batches": header["pending_batches"],
            "pending_empty": header["pending_empty"], "layers": layers}
