"""The host-side shape of one layer's mining state, as results.db stores it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerSnapshot:
    """Host copies of one layer's state: top-k [U, k] and per-unit accumulators [U]."""

    values: np.ndarray      # float32 [U, k], -inf in empty slots
    image_ids: np.ndarray   # int64 [U, k], -1 in empty slots
    positions: np.ndarray   # int32 [U, k], -1 in empty slots
    images: np.ndarray      # int64 [U]: images that gave the unit a number
    sum_max: np.ndarray     # float64 [U]: sum of their per-image maxima
    fired: np.ndarray       # int64 [U]: images whose maximum is > 0
    max: np.ndarray         # float32 [U]: the largest maximum (-inf before any image)
    hist: np.ndarray | None = None   # int64 [U, _hist.N_BINS]: per-image maxima per fixed bin
