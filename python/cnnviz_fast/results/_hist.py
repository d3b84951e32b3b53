"""Each unit's distribution of per-image maxima, as a histogram over fixed bins: table `unit_hist`.

  unit_hist(layer, unit, bin, count)   how many images gave the unit a maximum in `bin`;
                                       only bins with count > 0 are stored

The bin edges do not depend on the data, so counts are integers that add exactly under resume and
merge, whatever the activation scale. Magnitudes are binned on a log scale, four bins per octave
with edges 2^e * (1, 1.25, 1.5, 1.75) for e in -16..15 and a last edge 2^16 (129 edges, all exact
in float32); the sign doubles that. With m = the number of edges <= |v| (0..129):

  bin = CENTER + m for v >= 0,  CENTER - m for v < 0      (CENTER = 129, N_BINS = 259)

so bin CENTER holds |v| < 2^-16 (zero included), bin CENTER + m (1 <= m <= 128) holds
EDGES[m-1] <= v < EDGES[m], bin N_BINS - 1 holds v >= 2^16 (and +inf), and the negative bins
mirror them. NaN and -inf are not counted (the unit's `images` count leaves them out too), so a
unit's counts add up to its `images`. `bin_bounds()` gives every bin's [low, high) for drawing.
"""
from __future__ import annotations

import sqlite3
from typing import Sequence

import numpy as np

EDGES = np.array([2.0 ** e * (1 + q / 4) for e in range(-16, 16) for q in range(4)] + [2.0 ** 16])
CENTER = len(EDGES)
N_BINS = 2 * len(EDGES) + 1

HIST_SCHEMA = """
CREATE TABLE IF NOT EXISTS unit_hist(layer TEXT NOT NULL, unit INTEGER NOT NULL, bin INTEGER NOT NULL,
                                     count INTEGER NOT NULL, PRIMARY KEY (layer, unit, bin)) WITHOUT ROWID
"""


def empty(units: int) -> np.ndarray:
    """int64 [units, N_BINS] of zeros."""
    return np.zeros((units, N_BINS), np.int64)


def bins(v: np.ndarray) -> np.ndarray:
    """The bin of every value (int64, v's shape); meaningless for NaN and -inf (not counted)."""
    # m (the number of edges <= |v|) from the binary exponent and the mantissa's top two bits,
    # exact since every edge is 2^e * (1 + q/4): |v| = f * 2^x with f in [0.5, 1) gives
    # m = 4 * (x + 15) + floor(8 f) - 3, clipped to 0..len(EDGES) (a few times faster than a
    # binary search over the edges; tests compare both with the bounds bin by bin).
    v = np.asarray(v)
    a = np.abs(v.astype(np.float64))
    f, x = np.frexp(a)
    f = np.where(np.isfinite(f), f, 0.5)  # inf and NaN: set below, and NaN is never counted
    m = 4 * (x.astype(np.int64) + 15) + (8 * f).astype(np.int64) - 3
    m = np.where(a < EDGES[0], 0, np.where(a >= EDGES[-1], len(EDGES), m))
    return np.where(v < 0, CENTER - m, CENTER + m)


def counts(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int64 [U, N_BINS]: per unit, how many of the per-image maxima v [n, U] fall in each bin
    (only where `valid` [n, U])."""
    units = v.shape[1]
    flat = (bins(v) + np.arange(units, dtype=np.int64) * N_BINS)[valid]
    return np.bincount(flat, minlength=units * N_BINS).reshape(units, N_BINS)


def bin_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float64 [N_BINS]: bin b holds low[b] <= v < high[b] (negative bins hold
    low < v <= high, as |v| decides; the outer bins reach -inf and +inf)."""
    mags = np.concatenate([[0.0], EDGES, [np.inf]])          # magnitude bin m: [mags[m], mags[m+1])
    low, high = np.empty(N_BINS), np.empty(N_BINS)
    m = np.arange(len(EDGES) + 1)
    low[CENTER + m], high[CENTER + m] = mags[m], mags[m + 1]
    low[CENTER - m], high[CENTER - m] = -mags[m + 1], -mags[m]
    low[CENTER], high[CENTER] = -EDGES[0], EDGES[0]
    return low, high


def ensure_table(con: sqlite3.Connection) -> None:
    """Create unit_hist if this results.db has none yet (one written before it existed)."""
    con.execute(HIST_SCHEMA)


def write(con: sqlite3.Connection, layers: Sequence, hists: Sequence[np.ndarray | None]) -> None:
    """Replace every layer's histogram rows (inside the caller's checkpoint transaction)."""
    ensure_table(con)
    con.execute("DELETE FROM unit_hist")
    for layer, hist in zip(layers, hists):
        if hist is None:
            continue
        units, b = np.nonzero(hist)
        con.executemany("INSERT INTO unit_hist VALUES (?, ?, ?, ?)",
                        zip([layer.name] * len(units), units.tolist(), b.tolist(), hist[units, b].tolist()))


def read(con: sqlite3.Connection, layer: str, units: int) -> np.ndarray | None:
    """int64 [units, N_BINS] of a layer, or None when the database has no unit_hist table."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unit_hist'").fetchone() is None:
        return None
    hist = empty(units)
    for unit, b, count in con.execute("SELECT unit, bin, count FROM unit_hist WHERE layer = ?", (layer,)):
        if 0 <= unit < units and 0 <= b < N_BINS:
            hist[unit, b] = count
    return hist
