"""The mining loop on its own: batches from a loader, through a forward session, into a state.

No results.db, no progress, no checkpoints: `mine()` (the driver) orchestrates those around
`mine_batches`, and a worker of a cluster calls `mine_partial` on its range of image ids and sends
back the state (`MiningState.state_dict()`), which the driver merges exactly (see `_state`).

    session = ForwardSession(model, taps, "cpu", uint8_input=pre)
    with BatchLoader(manifest, pre, 32, ids=range(0, 3200), layout="uint8") as loader:
        part = mine_partial(session, loader, taps, k=9)
    total.merge(part.state)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..data import Batch, BatchLoader
from ._state import MiningState


def mine_batches(session, loader: BatchLoader, state: MiningState) -> Iterator[Batch]:
    """Fold every batch of `loader` into `state` (under its batch number), yielding each batch
    once it is in: the caller counts, reports, checkpoints or stops (by leaving the loop; the batch
    it last saw is in the state, no later one is). A batch in which no image decoded is recorded
    too, so that the state knows it holds it."""
    for batch in loader:
        outputs = session.run(batch.images) if len(batch.ids) else None
        loader.release(batch)  # the images are read: the next batch decodes during the update
        state.update(outputs, batch.ids, session.host, batch=batch.index)
        yield batch


@dataclass
class Partial:
    """What `mine_partial` gives: the state, the images read (decoded or failed), the failures
    (image_id, path, reason)."""

    state: MiningState
    images: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def mine_partial(session, loader: BatchLoader, layers: Sequence, k: int, device: str = "cpu",
                 state: MiningState | None = None) -> Partial:
    """Mine every batch of `loader` (a range or list of ids: `BatchLoader(ids=...)`) into `state`
    (default: a new state of `layers`, `k` on `device`)."""
    part = Partial(state if state is not None else MiningState(layers, k, device))
    for batch in mine_batches(session, loader, part.state):
        part.images += batch.size
        part.errors.extend(batch.errors)
    return part
