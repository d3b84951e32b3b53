"""The images a projection needs, each decoded once with the miner's own preprocessing.

The miner's batch loader decodes them (its thread pool, packed batches of the requested ids).
Crops (uint8 RGB, resized and centre-cropped exactly as `cnnviz_fast.data` does for mining) go to
a memory-mapped scratch file, so that every layer reads them without decoding again and memory
stays flat however many images made some top-k. Normalisation uses the same per-channel tables
as the mining data path, so the float input equals what was mined. Each decoded image also gets
a small JPEG thumbnail of the whole preprocessed crop for the report.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import BatchLoader, Manifest, Preprocess
from ..render import save_jpeg
from ._disk import memmap

THUMB_SIDE = 192
BATCH = 64  # images per loader batch: enough to keep every decode thread busy


class ImageCache:
    """uint8 crops of `image_ids`, decoded by `workers` threads into `scratch` (a file path).

    `failed` maps image ids that could not be used to the reason (vanished, unreadable, ...).
    `thumbs`, when given, is a folder that receives `<image_id>.jpg` per decoded image.
    """

    def __init__(self, manifest: Manifest, pre: Preprocess, image_ids, scratch: Path,
                 workers: int = 2, thumbs: Path | None = None):
        self.pre = pre
        self.ids = np.unique(np.asarray(list(image_ids), np.int64))
        self._row = {int(i): r for r, i in enumerate(self.ids)}
        self.failed: dict[int, str] = {}
        _, h, w = pre.shape
        scratch.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = scratch
        self.crops = memmap(scratch, np.uint8, (max(len(self.ids), 1), h, w, 3))  # space reserved (_disk.py)
        self._tables = pre.tables()
        self._src = (2, 1, 0) if pre.channel_order == "BGR" else (0, 1, 2)
        if thumbs is not None:
            thumbs.mkdir(parents=True, exist_ok=True)
        # uint8 batches come in the model's channel order; the cache keeps RGB (the report's and
        # render's order), so a BGR model's crops are flipped back (exact: a permutation).
        flip = pre.channel_order == "BGR"
        with BatchLoader(manifest, pre, BATCH, max(1, workers), layout="uint8", ids=self.ids, packed=True) as loader:
            for batch in loader:
                for image_id, crop in zip(batch.ids.tolist(), batch.images):
                    crop = crop[:, :, ::-1] if flip else crop
                    self.crops[self._row[image_id]] = crop
                    if thumbs is not None:
                        save_jpeg(thumbs / f"{image_id}.jpg", _thumbnail(np.ascontiguousarray(crop)))
                self.failed.update((image_id, reason) for image_id, _, reason in batch.errors)

    def __len__(self) -> int:
        return len(self.ids)

    def crop(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB crop of one image."""
        return self.crops[self._row[int(image_id)]]

    def normalised(self, image_ids) -> np.ndarray:
        """float32 [n, 3, H, W]: the model's input for these images (the mining preprocessing)."""
        _, h, w = self.pre.shape
        out = np.empty((len(image_ids), 3, h, w), np.float32)
        for n, image_id in enumerate(image_ids):
            crop = self.crop(image_id)
            for c in range(3):
                np.take(self._tables[c], crop[:, :, self._src[c]], out=out[n, c])
        return out

    def close(self) -> None:
        """Drop the scratch file."""
        del self.crops
        self._scratch.unlink(missing_ok=True)


def _thumbnail(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape[:2]
    if max(h, w) <= THUMB_SIDE:
        return crop
    scale = THUMB_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def scratch_path(folder: Path) -> Path:
    """A per-process scratch file name inside `folder`."""
    return folder / f".images.{os.getpid()}.npy"
