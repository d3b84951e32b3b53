"""The images a projection needs, each decoded once with the miner's own preprocessing.

Crops (uint8 RGB, resized and centre-cropped exactly as `cnnviz_fast.data` does for mining) go to
a memory-mapped scratch file, so that every layer reads them without decoding again and memory
stays flat however many images made some top-k. Normalisation uses the same per-channel tables
as the mining data path, so the float input equals what was mined. Each decoded image also gets
a small JPEG thumbnail of the whole preprocessed crop for the report.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import DecodeError, Manifest, Preprocess, load_crop
from ..render import save_jpeg

THUMB_SIDE = 192


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
        self.crops = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8,
                                               shape=(max(len(self.ids), 1), h, w, 3))
        self._tables = pre.tables()
        self._src = (2, 1, 0) if pre.channel_order == "BGR" else (0, 1, 2)
        if thumbs is not None:
            thumbs.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(), ThreadPoolExecutor(max(1, workers)) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            for image_id, reason in zip(self.ids.tolist(), pool.map(
                    lambda i: self._decode(manifest, i, thumbs), self.ids.tolist())):
                if reason is not None:
                    self.failed[image_id] = reason

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

    def _decode(self, manifest: Manifest, image_id: int, thumbs: Path | None) -> str | None:
        try:
            crop = load_crop(manifest.read(image_id), self.pre)
        except DecodeError as exc:
            return str(exc)
        except Exception as exc:  # one bad image must cost its entries, not the pass
            return f"unexpected {type(exc).__name__} while decoding: {exc}"
        self.crops[self._row[image_id]] = crop
        if thumbs is not None:
            save_jpeg(thumbs / f"{image_id}.jpg", _thumbnail(crop))
        return None


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
