"""Cutting the manifest into the shards a cluster run hands out.

A shard is a run of whole batches of the manifest's fixed batch grid (batch b = image ids
[b*B, (b+1)*B)): the per-unit sums are exact only for whole batches (`mining._state`), so no two
shards may share one. The shard size (images, rounded up to whole batches) is part of the run's
configuration; the same dataset and size always give the same shards.

For tar datasets a shard's end moves forward to the batch that holds the end of the tar file it
reached, so each tar file is read by one worker — except, when a tar file's image count is not a
multiple of the batch size, the one batch that straddles its end (whole batches come first).
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SHARD_IMAGES = 4096


@dataclass(frozen=True)
class Shard:
    """Shard `index`: batches first_batch..stop_batch-1, image ids start..stop-1."""

    index: int
    first_batch: int
    stop_batch: int
    start: int
    stop: int

    @property
    def images(self) -> int:
        return self.stop - self.start


def shard_batches(shard_images: int, batch_size: int) -> int:
    """Batches per shard: `shard_images` rounded up to whole batches."""
    return max(1, -(-shard_images // batch_size))


def plan_shards(n_images: int, batch_size: int, shard_images: int, tar_ends: list[int] | None = None) -> list[Shard]:
    """The shards of a manifest of `n_images`. tar_ends: for a tar dataset, the id one past each
    tar file's last image (ascending), so that shards end where tar files do (module docstring)."""
    per = shard_batches(shard_images, batch_size)
    n_batches = -(-n_images // batch_size)
    # Batch numbers at which a tar file ends inside or at the end of that batch.
    tar_batches = sorted({-(-end // batch_size) for end in tar_ends or []})
    shards, first, j = [], 0, 0
    while first < n_batches:
        stop = min(first + per, n_batches)
        if tar_batches:
            while j < len(tar_batches) and tar_batches[j] < stop:
                j += 1
            if j < len(tar_batches) and tar_batches[j] <= first + 2 * per:
                stop = min(tar_batches[j], n_batches)  # finish the tar file rather than split it
        shards.append(Shard(len(shards), first, stop, first * batch_size, min(stop * batch_size, n_images)))
        first = stop
    return shards


def tar_ends(manifest) -> list[int] | None:
    """For a tar manifest, the id one past each tar file's last image; None for other kinds."""
    if manifest.kind != "tar":
        return None
    prefixes = [str(p) + "/" for p in manifest.spec["shards"]]
    ends, j = [], 0
    for i in range(len(manifest)):
        path = manifest.path(i)
        if not path.startswith(prefixes[j]):
            ends.append(i)
            while j + 1 < len(prefixes) and not path.startswith(prefixes[j]):
                j += 1
    ends.append(len(manifest))
    return ends
