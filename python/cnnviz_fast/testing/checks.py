"""Seeds worth projecting and the per-seed relative comparison used against the oracle (NumPy only)."""
from __future__ import annotations

import numpy as np


def pick_seeds(tap: np.ndarray, count: int = 6, offset: int = 0) -> list[tuple[int, ...]]:
    """Seeds (n, c, y, x) at corners, edges and the centre ((n, c) for a [N, C] tap: top units),
    each on a firing unit, spread over the images; `offset` rotates the list of spots, so that a few
    seeds per layer still visit all of them. A spot where no channel fires in any image is skipped."""
    n_img = tap.shape[0]
    if tap.ndim == 2:
        order = np.argsort(-tap, axis=1)
        return [(k % n_img, int(order[k % n_img, k // n_img])) for k in range(count)]
    h, w = tap.shape[2:]
    spots = [(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2), (h - 1, w // 3), (h // 3, 0)]
    spots = spots[offset % 6:] + spots[:offset % 6]
    seeds = []
    for k, (y, x) in enumerate(spots[:count]):
        for dn in range(n_img):
            n = (k + dn) % n_img
            firing = np.flatnonzero(tap[n, :, y, x] > 0)
            if firing.size:
                c = int(firing[(7 * k) % firing.size]) if k % 2 else int(np.argmax(tap[n, :, y, x]))
                seeds.append((n, c, y, x))
                break
    return seeds


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """Per seed s: max |got[s] - want[s]| <= rtol * max |want[s]|, and no `want[s]` is all zero
    (a seed on a unit that does not fire checks nothing). Raises AssertionError with the errors."""
    if got.shape != want.shape:
        raise AssertionError(f"shapes differ: {got.shape} vs {want.shape}")
    scale = np.abs(want).reshape(len(want), -1).max(1)
    if not np.all(scale > 0):
        raise AssertionError(f"seed(s) {np.flatnonzero(scale == 0).tolist()} projected to zero: pick firing units")
    err = np.abs(got - want).reshape(len(want), -1).max(1)
    if not np.all(err <= rtol * scale):
        raise AssertionError(f"relative errors {err / scale} over {rtol:g}")
