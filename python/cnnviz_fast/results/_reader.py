"""The read-only view of an output folder's results.db (DESIGN.md, "Results on disk"): the one way
the projection pass, the report and user programs read it. It never writes and takes no lock, so
it can be opened while the folder is idle or finished (a miner still running shows its last
checkpoint).

    from cnnviz_fast.results import Results
    with Results("out/") as res:
        print(res.status, res.k, [layer.name for layer in res.layers()])
        top = res.topk("conv3")                    # arrays [units, k], rank 0 strongest
        paths = res.paths(top.image_ids[7])        # image_id -> path, unit 7's images
        stats = res.unit_stats("conv3")[7]         # images, mean_max, firing_rate, max, dead

Opening verifies the file (`_check.verify`: quick_check, schema version, run and progress rows)
and refuses a damaged one with ResultsError; a query that fails later (a page damaged meanwhile)
raises ResultsError too, never sqlite3's own errors.

The tables stay plain SQLite for ad-hoc queries too (`sqlite3 out/results.db`); `_schema.py`
lists them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ResultsError
from . import _hist
from ._check import damaged, sqlite_error, verify
from ._schema import DB_NAME, decode_value


@dataclass(frozen=True)
class LayerInfo:
    """A mined layer as the run table records it."""

    name: str
    tensor: str
    kind: str
    units: int
    map_shape: tuple[int, int]


@dataclass
class TopK:
    """A layer's top-k rows as arrays [units, k]; image_id -1 marks an empty slot (a unit that
    saw fewer than k images)."""

    values: np.ndarray     # float64 [U, k]
    image_ids: np.ndarray  # int64 [U, k]
    ys: np.ndarray         # int64 [U, k]
    xs: np.ndarray         # int64 [U, k]

    @property
    def units(self) -> int:
        return self.values.shape[0]

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def digest(self) -> str:
        """sha256 of the rows: a projection made from other rows is out of date."""
        h = hashlib.sha256()
        for a in (self.values, self.image_ids, self.ys, self.xs):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


class Results:
    """results.db of `out_dir`, opened read-only. Use as a context manager or call `close()`.

    `run` is the run table as a dict (values decoded from JSON): model_sha256, model_path, layers,
    top_k, preprocess, dataset, versions, ... Raises ResultsError when the file is missing, is not
    SQLite, or lacks the tables every results.db has (run, images, topk, unit_stats).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.path = self.out / DB_NAME
        if not self.path.is_file():
            raise ResultsError(f"{self.path} does not exist: run `cnnviz-fast mine MODEL DATA --out {self.out}` first")
        try:
            self._con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.DatabaseError as exc:  # e.g. a folder we may not read
            raise ResultsError(f"cannot open {self.path} ({exc})") from None
        try:
            # One read transaction: the checks and the rows read here see the same checkpoint.
            self._con.execute("BEGIN")
            try:
                self._tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                verify(self._con, self.path)
                self.run = {k: decode_value(v) for k, v in self._con.execute("SELECT key, value FROM run")}
            finally:
                self._con.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            self._con.close()
            if "not a database" in str(exc) or "encrypted" in str(exc):
                raise ResultsError(f"{self.path} is not a readable SQLite database ({exc})") from None
            raise sqlite_error(self.path, exc) from None
        except BaseException:
            self._con.close()
            raise

    def _query(self, sql: str, args=()) -> list:
        """All rows of a query; a failure of the file (a page damaged after opening) as ResultsError."""
        try:
            return self._con.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(self.path, exc) from None

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    @property
    def status(self) -> str:
        """The miner's progress status ("finished", "running", "stopped"), "finished" when the
        database has no progress table (written by another tool)."""
        if "progress" not in self._tables:
            return "finished"
        rows = self._query("SELECT value FROM progress WHERE key = 'status'")
        return str(rows[0][0]) if rows else "finished"

    @property
    def progress(self) -> dict:
        """The miner's progress rows (status, next_batch, images_done, ...); {} when there are none."""
        if "progress" not in self._tables:
            return {}
        return dict(self._query("SELECT key, value FROM progress"))

    @property
    def k(self) -> int:
        """Images kept per unit (the run's top_k; else the deepest rank stored)."""
        k = self.run.get("top_k")
        if k is None:
            k = self._query("SELECT COALESCE(MAX(rank) + 1, 0) FROM topk")[0][0]
        return int(k)

    def layers(self) -> list[LayerInfo]:
        """The mined layers in the run's order (from the run table, else from topk)."""
        spec = self.run.get("layers")
        if spec:
            return [LayerInfo(d["name"], d.get("tensor", d["name"]), d.get("kind", "conv"), int(d["units"]),
                              tuple(int(v) for v in d.get("map_shape", (1, 1)))) for d in spec]
        rows = self._query("SELECT layer, MAX(unit) + 1 FROM unit_stats GROUP BY layer ORDER BY layer")
        return [LayerInfo(name, name, "conv", int(units), (0, 0)) for name, units in rows]

    def layer(self, name: str) -> LayerInfo:
        """The mined layer called `name` (or tapping tensor `name`); ResultsError listing the mined
        layers when there is none."""
        layers = self.layers()
        for info in layers:
            if name in (info.name, info.tensor):
                return info
        raise ResultsError(f"layer {name!r} was not mined in {self.path}; mined: "
                           f"{', '.join(info.name for info in layers) or '(none)'}")

    def _info(self, layer: LayerInfo | str) -> LayerInfo:
        return self.layer(layer) if isinstance(layer, str) else layer

    def topk(self, layer: LayerInfo | str) -> TopK:
        """The layer's top-k rows as arrays [units, k] (a LayerInfo or a layer name)."""
        layer = self._info(layer)
        k = self.k
        shape = (layer.units, k)
        t = TopK(np.full(shape, np.nan), np.full(shape, -1, np.int64), np.zeros(shape, np.int64),
                 np.zeros(shape, np.int64))
        for unit, rank, value, image_id, y, x in self._query(
                "SELECT unit, rank, value, image_id, y, x FROM topk WHERE layer = ?", (layer.name,)):
            if 0 <= unit < layer.units and 0 <= rank < k:
                t.values[unit, rank], t.image_ids[unit, rank] = value, image_id
                t.ys[unit, rank], t.xs[unit, rank] = y, x
        return t

    def unit_stats(self, layer: LayerInfo | str) -> list[dict]:
        """Per unit: images, mean_max, firing_rate, max (None before any image) and `dead` (saw
        images, never fired)."""
        layer = self._info(layer)
        stats = [{"images": 0, "mean_max": None, "firing_rate": None, "max": None, "dead": False}
                 for _ in range(layer.units)]
        for unit, images, mean_max, rate, mx in self._query(
                "SELECT unit, images, mean_max, firing_rate, max FROM unit_stats WHERE layer = ?", (layer.name,)):
            if 0 <= unit < layer.units:
                dead = images > 0 and (rate is None or rate == 0.0)
                stats[unit] = {"images": int(images), "mean_max": mean_max, "firing_rate": rate, "max": mx,
                               "dead": bool(dead)}
        return stats

    def unit_hist(self, layer: LayerInfo | str) -> np.ndarray | None:
        """int64 [units, N_BINS]: each unit's per-image maxima counted over the fixed bins of
        `cnnviz_fast.results._hist` (`bin_bounds()`), or None when results.db has no unit_hist."""
        layer = self._info(layer)
        try:
            return _hist.read(self._con, layer.name, layer.units)
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(self.path, exc) from None

    def paths(self, image_ids) -> dict[int, str]:
        """image_id -> path for the given ids, any array shape (-1 and unknown ids are left out)."""
        ids = sorted({int(i) for i in np.asarray(image_ids, np.int64).ravel() if i >= 0})
        out: dict[int, str] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            out.update(self._query(f"SELECT image_id, path FROM images WHERE image_id IN ({marks})", chunk))
        return out

    def counts(self) -> dict[str, int]:
        """{"images": images in the manifest, "errors": images that could not be used}."""
        images = self._query("SELECT COUNT(*) FROM images")[0][0]
        errors = self._query("SELECT COUNT(*) FROM errors")[0][0] if "errors" in self._tables else 0
        return {"images": int(images), "errors": int(errors)}

    def errors(self, limit: int | None = 50) -> list[tuple[int, str, str]]:
        """(image_id, path, reason) of images that could not be used, by image id; `limit` rows
        (None: all)."""
        if "errors" not in self._tables:
            return []
        return list(self._query("SELECT image_id, path, error FROM errors ORDER BY image_id LIMIT ?",
                                   (-1 if limit is None else limit,)))

