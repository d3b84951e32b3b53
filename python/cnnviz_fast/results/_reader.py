"""A read-only view of an output folder's results.db (DESIGN.md, "Results on disk"), for the
passes after mining: the run's configuration and provenance, the image paths, the top-k rows and
the per-unit statistics. It never writes, so it can be open while nothing else is.
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
from ._schema import DB_NAME


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
    """results.db of `out_dir`, opened read-only. Use as a context manager or call `close()`."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.path = self.out / DB_NAME
        if not self.path.is_file():
            raise ResultsError(f"{self.path} does not exist: run `cnnviz-fast mine MODEL DATA --out {self.out}` first")
        try:
            self._con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise ResultsError(f"{self.path} is not a readable SQLite database ({exc})") from None
        missing = {"run", "images", "topk", "unit_stats"} - tables
        if missing:
            raise ResultsError(f"{self.path} is not a cnnviz_fast results database (no table "
                               f"{', '.join(sorted(missing))})")
        self._tables = tables
        self.run = {k: _json(v) for k, v in self._con.execute("SELECT key, value FROM run")}

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
        row = self._con.execute("SELECT value FROM progress WHERE key = 'status'").fetchone()
        return str(row[0]) if row else "finished"

    @property
    def k(self) -> int:
        k = self.run.get("top_k")
        if k is None:
            k = self._con.execute("SELECT COALESCE(MAX(rank) + 1, 0) FROM topk").fetchone()[0]
        return int(k)

    def layers(self) -> list[LayerInfo]:
        """The mined layers in the run's order (from the run table, else from topk)."""
        spec = self.run.get("layers")
        if spec:
            return [LayerInfo(d["name"], d.get("tensor", d["name"]), d.get("kind", "conv"), int(d["units"]),
                              tuple(int(v) for v in d.get("map_shape", (1, 1)))) for d in spec]
        rows = self._con.execute("SELECT layer, MAX(unit) + 1 FROM unit_stats GROUP BY layer ORDER BY layer")
        return [LayerInfo(name, name, "conv", int(units), (0, 0)) for name, units in rows]

    def topk(self, layer: LayerInfo) -> TopK:
        k = self.k
        shape = (layer.units, k)
        t = TopK(np.full(shape, np.nan), np.full(shape, -1, np.int64), np.zeros(shape, np.int64),
                 np.zeros(shape, np.int64))
        for unit, rank, value, image_id, y, x in self._con.execute(
                "SELECT unit, rank, value, image_id, y, x FROM topk WHERE layer = ?", (layer.name,)):
            if 0 <= unit < layer.units and 0 <= rank < k:
                t.values[unit, rank], t.image_ids[unit, rank] = value, image_id
                t.ys[unit, rank], t.xs[unit, rank] = y, x
        return t

    def unit_stats(self, layer: LayerInfo) -> list[dict]:
        """Per unit: images, mean_max, firing_rate, max (None before any image) and `dead` (saw
        images, never fired)."""
        stats = [{"images": 0, "mean_max": None, "firing_rate": None, "max": None, "dead": False}
                 for _ in range(layer.units)]
        for unit, images, mean_max, rate, mx in self._con.execute(
                "SELECT unit, images, mean_max, firing_rate, max FROM unit_stats WHERE layer = ?", (layer.name,)):
            if 0 <= unit < layer.units:
                dead = images > 0 and (rate is None or rate == 0.0)
                stats[unit] = {"images": int(images), "mean_max": mean_max, "firing_rate": rate, "max": mx,
                               "dead": bool(dead)}
        return stats

    def paths(self, image_ids) -> dict[int, str]:
        """image_id -> path for the given ids (unknown ids are left out)."""
        ids = sorted({int(i) for i in image_ids if int(i) >= 0})
        out: dict[int, str] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            out.update(self._con.execute(f"SELECT image_id, path FROM images WHERE image_id IN ({marks})", chunk))
        return out

    def counts(self) -> dict[str, int]:
        """Numbers for the report: images in the manifest, errors recorded."""
        images = self._con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        errors = self._con.execute("SELECT COUNT(*) FROM errors").fetchone()[0] if "errors" in self._tables else 0
        return {"images": int(images), "errors": int(errors)}

    def errors(self, limit: int = 50) -> list[tuple[int, str, str]]:
        if "errors" not in self._tables:
            return []
        return list(self._con.execute("SELECT image_id, path, error FROM errors ORDER BY image_id LIMIT ?", (limit,)))


def _json(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
