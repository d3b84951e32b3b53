"""What mining accumulates: a running top-k store per layer and per-unit statistics, mergeable.

A state covers a set of batches of the manifest's fixed grid (batch b = image ids [b*B, (b+1)*B),
see `cnnviz_fast.data.loader`). Partial states of disjoint sets of batches, merged in any order
and any grouping, give bit for bit the state one run over all of them gives:

- top-k: the total order of `_C.topk_merge` (value descending, then image id ascending; NaN and
  -inf never enter), so the k best of the union are the k best of the k best of each part;
  `merge` sorts the two stores' rows by that order on the host and keeps the first k.
- counts (`images`, `fired`) are integers, `max` is a maximum: exact whatever the order. So is
  `hist`, each unit's histogram of per-image maxima over bins fixed in advance (int64 [U, N_BINS],
  `cnnviz_fast.results._hist`): the counts add.
- `sum_max` is float64 and NOT exact: float64 addition is not associative, so the sum is defined
  in one fixed order, the single run's: each batch's float32 maxima summed in float64 (NumPy, rows
  in image-id order), the batch sums added in batch order, starting from batch 0. A state holds
  the sum of its leading run of batches 0..next_batch-1 (`next_batch`) and, separately, the sum of
  every later batch it has (`pending`); a merge folds pending batches into the leading run as soon
  as they join it, so the fold order never depends on the merge order. A single in-order run has
  nothing pending; a worker's state of batches 100..199 holds 100 per-batch sums [U] per layer
  until merged behind batches 0..99. Exact sums would need a wider accumulator than results.db's
  float64 `unit_sums.sum_max` stores, and would change the sums' last bits from earlier releases.
  Consequence: the sums are exact only for whole batches, so two states must not share a batch
  (`merge` refuses; a range that cuts a batch gives a state that merges only with states not
  holding the rest of that batch).

A score that is NaN (ORT's ReduceMax propagates NaN) or -inf (a map with no number) does not
count for that unit, exactly as the top-k merge refuses it. `state_dict()` / `set_state_dict()`
/ `merge()` follow netdissect's habit (plain NumPy arrays, picklable, for processes and clusters).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import MiningError
from ..results import LayerSnapshot
from ..results import _hist

_TOPK = ("values", "image_ids", "positions")
_STATS = ("images", "sum_max", "fired", "max", "hist")


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
        self._hist = [_hist.empty(layer.units) for layer in self.layers]
        self.next_batch = 0                  # batches 0..next_batch-1 are folded into _sum
        self._pending: dict[int, list[np.ndarray] | None] = {}   # later batches' sums (None: no image)

    @property
    def batches(self) -> list[int]:
        """The batch numbers this state holds, ascending."""
        return list(range(self.next_batch)) + sorted(self._pending)

    def update(self, outputs: Sequence[tuple[Any, Any]] | None, ids: np.ndarray, host,
               batch: int | None = None) -> None:
        """Fold one batch in: `outputs` [(values [n, U], positions [n, U])] per layer (None when no
        image of the batch decoded), `ids` int64 [n]; `host(values)` gives the values as NumPy (a
        copy from the device on CUDA). `batch`: its number on the manifest's grid (default: the
        one after the leading run)."""
        batch = self.next_batch if batch is None else int(batch)
        if batch < self.next_batch or batch in self._pending:
            raise MiningError(f"batch {batch} is already in this mining state")
        sums = None
        if outputs is not None and len(ids):
            sums = []
            for i, (values, positions) in enumerate(outputs):
                self.stores[i].merge(values, positions, ids)
                v = host(values)
                valid = ~np.isnan(v) & (v != -np.inf)
                self._images[i] += valid.sum(axis=0)
                sums.append(np.where(valid, v, 0.0).sum(axis=0, dtype=np.float64))
                self._fired[i] += (v > 0).sum(axis=0)
                self._hist[i] += _hist.counts(v, valid)
                if v.shape[0]:
                    self._max[i] = np.fmax(self._max[i], np.where(valid, v, -np.inf).max(axis=0))
        self._pending[batch] = sums
        self._fold()

    def snapshot(self) -> list[LayerSnapshot]:
        """Host copies of everything (a checkpoint); the only device-to-host copy of the top-k.
        Only a state of batches 0..next_batch-1 has a snapshot (results.db keeps no pending sums)."""
        if self._pending:
            raise MiningError(f"a mining state of batches {_spans(self.batches)} has no checkpoint: "
                              "it does not start at batch 0 or has gaps")
        return [LayerSnapshot(s.values(), s.image_ids(), s.positions(), self._images[i].copy(),
                              self._sum[i].copy(), self._fired[i].copy(), self._max[i].copy(),
                              self._hist[i].copy())
                for i, s in enumerate(self.stores)]

    def restore(self, snaps: Sequence[LayerSnapshot], next_batch: int = 0) -> None:
        """Load a checkpoint's state (resume): the state of batches 0..next_batch-1."""
        for i, snap in enumerate(snaps):
            self._load(i, snap.values, snap.image_ids, snap.positions)
            self._images[i] = snap.images.astype(np.int64)
            self._sum[i] = snap.sum_max.astype(np.float64)
            self._fired[i] = snap.fired.astype(np.int64)
            self._max[i] = snap.max.astype(np.float32)
            # A results.db written before unit_hist existed has none: the histogram then covers
            # only the images mined after the resume (the report says so: counts < images).
            hist = getattr(snap, "hist", None)
            self._hist[i] = _hist.empty(self.layers[i].units) if hist is None else hist.astype(np.int64)
        self.next_batch, self._pending = int(next_batch), {}

    def state_dict(self) -> dict:
        """Everything as host NumPy arrays and plain values (picklable; `set_state_dict` inverts it)."""
        pending = sorted(self._pending)
        per_layer = []
        for i, (layer, store) in enumerate(zip(self.layers, self.stores)):
            sums = np.zeros((len(pending), layer.units), np.float64)
            for row, b in enumerate(pending):
                if self._pending[b] is not None:
                    sums[row] = self._pending[b][i]
            per_layer.append({"name": layer.name, "values": store.values(), "image_ids": store.image_ids(),
                              "positions": store.positions(), "images": self._images[i].copy(),
                              "sum_max": self._sum[i].copy(), "fired": self._fired[i].copy(),
                              "max": self._max[i].copy(), "hist": self._hist[i].copy(), "pending_sums": sums})
        return {"k": self.k, "next_batch": self.next_batch, "pending_batches": pending,
                "pending_empty": [b for b in pending if self._pending[b] is None], "layers": per_layer}

    def set_state_dict(self, state: dict) -> None:
        """Replace this state by one `state_dict()` gave (same layers and k)."""
        self._check(state)
        empty = set(state["pending_empty"])
        for i, d in enumerate(state["layers"]):
            self._load(i, d["values"], d["image_ids"], d["positions"])
            self._images[i], self._sum[i] = d["images"].astype(np.int64), d["sum_max"].astype(np.float64)
            self._fired[i], self._max[i] = d["fired"].astype(np.int64), d["max"].astype(np.float32)
            self._hist[i] = d["hist"].astype(np.int64)
        self.next_batch = int(state["next_batch"])
        self._pending = {int(b): None if b in empty else [d["pending_sums"][row] for d in state["layers"]]
                         for row, b in enumerate(state["pending_batches"])}

    def merge(self, other: "MiningState | dict") -> None:
        """Add another state of the same layers and k over other batches (a MiningState or its
        `state_dict()`); the result is the state of the union of their batches, as one run over
        them gives it (module docstring)."""
        theirs = other.state_dict() if isinstance(other, MiningState) else other
        self._check(theirs)
        their_next = int(theirs["next_batch"])
        shared = (set(range(self.next_batch)) | set(self._pending)) & (
            set(range(their_next)) | set(int(b) for b in theirs["pending_batches"]))
        if shared:
            raise MiningError(f"cannot merge mining states that both hold batch(es) {_spans(sorted(shared))}")
        mine = self.state_dict()
        empty = set(theirs["pending_empty"])
        for i, (a, b) in enumerate(zip(mine["layers"], theirs["layers"])):
            self._load(i, *_topk_union(a, b, self.k))
            self._images[i] = a["images"] + b["images"]
            self._fired[i] = a["fired"] + b["fired"]
            self._max[i] = np.fmax(a["max"], b["max"]).astype(np.float32)
            self._hist[i] = a["hist"] + b["hist"]
            if their_next:  # theirs holds the leading run (ours is empty: batch 0 is not shared)
                self._sum[i] = b["sum_max"].astype(np.float64)
        if their_next:
            self.next_batch = their_next
        for row, batch in enumerate(theirs["pending_batches"]):
            self._pending[int(batch)] = None if batch in empty else [d["pending_sums"][row] for d in theirs["layers"]]
        self._fold()

    def _fold(self) -> None:
        """Add the pending batches that join the leading run, in batch order."""
        while self.next_batch in self._pending:
            sums = self._pending.pop(self.next_batch)
            if sums is not None:
                for i, s in enumerate(sums):
                    self._sum[i] += s
            self.next_batch += 1

    def _load(self, i: int, values, image_ids, positions) -> None:
        self.stores[i].load(np.ascontiguousarray(values, np.float32), np.ascontiguousarray(image_ids, np.int64),
                            np.ascontiguousarray(positions, np.int32))

    def _check(self, state: dict) -> None:
        names = [d["name"] for d in state["layers"]]
        if names != [layer.name for layer in self.layers] or int(state["k"]) != self.k:
            raise MiningError(f"cannot merge mining states of different layers or k: {names} k={state['k']} "
                              f"vs {[layer.name for layer in self.layers]} k={self.k}")


def _topk_union(a: dict, b: dict, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best of two stores' rows, per unit, by (value descending, image id ascending).
    Empty slots (-inf, -1, -1) sort after every real entry (real values are > -inf)."""
    values = np.concatenate([a["values"], b["values"]], axis=1)
    ids = np.concatenate([a["image_ids"], b["image_ids"]], axis=1)
    positions = np.concatenate([a["positions"], b["positions"]], axis=1)
    order = np.lexsort((ids, -values), axis=1)[:, :k]  # stable; -0.0 and 0.0 tie, as in the kernel
    return (np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1),
            np.take_along_axis(positions, order, axis=1))


def _spans(batches: Sequence[int]) -> str:
    """"0-4, 7, 9-10" for [0, 1, 2, 3, 4, 7, 9, 10]."""
    out, start = [], None
    for j, b in enumerate(batches):
        if start is None:
            start = b
        if j + 1 == len(batches) or batches[j + 1] != b + 1:
            out.append(f"{start}" if start == b else f"{start}-{b}")
            start = None
    return ", ".join(out) or "none"
