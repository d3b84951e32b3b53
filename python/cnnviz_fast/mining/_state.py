"""What mining accumulates: a running top-k store per layer and exact per-unit statistics.

Statistics are kept so that a run resumed from a checkpoint ends bit-identical to an
uninterrupted one: counts are integers, the sum of per-image maxima is float64 and grows one
fixed batch at a time (batch boundaries come from the manifest, not from when a run started), and
the maximum is exact. A score that is NaN (ORT's ReduceMax propagates NaN) or -inf (a map with no
number) does not count for that unit, exactly as the top-k merge refuses it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..results import LayerSnapshot


class MiningState:
    """Per layer: a `_C.TopKStore` (on the device for CUDA runs) and the statistics (host)."""

    def __init__(self, layers: Sequence, k: int, device: str = "cpu"):
        from .. import _C

        self.layers = list(layers)
        self.k = k
        self.stores = [_C.TopKStore(layer.units, k, device) for layer in self.layers]
        self._images = [np.zeros(layer.units, np.int64) for layer in self.layers]
        self._sum = [np.zeros(layer.units, np.float64) for layer in self.layers]
        self._fired = [np.zeros(layer.units, np.int64) for layer in self.layers]
        self._max = [np.full(layer.units, -np.inf, np.float32) for layer in self.layers]

    def update(self, outputs: Sequence[tuple[Any, Any]], ids: np.ndarray, host) -> None:
        """Fold one batch in: `outputs` [(values [n, U], positions [n, U])] per layer, `ids` int64
        [n]; `host(values)` gives the values as NumPy (a copy from the device on CUDA)."""
        for i, (values, positions) in enumerate(outputs):
            self.stores[i].merge(values, positions, ids)
            v = host(values)
            valid = ~np.isnan(v) & (v != -np.inf)
            self._images[i] += valid.sum(axis=0)
            self._sum[i] += np.where(valid, v, 0.0).sum(axis=0, dtype=np.float64)
            self._fired[i] += (v > 0).sum(axis=0)
            if v.shape[0]:
                self._max[i] = np.fmax(self._max[i], np.where(valid, v, -np.inf).max(axis=0))

    def snapshot(self) -> list[LayerSnapshot]:
        """Host copies of everything (a checkpoint); the only device-to-host copy of the top-k."""
        return [LayerSnapshot(s.values(), s.image_ids(), s.positions(), self._images[i].copy(),
                              self._sum[i].copy(), self._fired[i].copy(), self._max[i].copy())
                for i, s in enumerate(self.stores)]

    def restore(self, snaps: Sequence[LayerSnapshot]) -> None:
        """Load a checkpoint's state (resume)."""
        for i, snap in enumerate(snaps):
            self.stores[i].load(np.ascontiguousarray(snap.values, np.float32),
                                np.ascontiguousarray(snap.image_ids, np.int64),
                                np.ascontiguousarray(snap.positions, np.int32))
            self._images[i] = snap.images.astype(np.int64)
            self._sum[i] = snap.sum_max.astype(np.float64)
            self._fired[i] = snap.fired.astype(np.int64)
            self._max[i] = snap.max.astype(np.float32)
