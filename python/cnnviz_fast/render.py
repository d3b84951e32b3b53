"""Pictures: reconstructions and patches made displayable, Fig. 2 grids, first-layer filter tiles,
montages, PNG writing.

Arrays are NumPy throughout: a reconstruction is float [3, R, R] (channel-first, as the projector
returns it), a displayable tile uint8 [h, w, 3]. Display normalisation follows Zeiler & Fergus:
each reconstruction on its own, 0.5 + 0.5 * r / max|r| (so zero is mid grey and the sign shows);
an all-zero reconstruction is plain grey.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# Grid gutters and empty cells: a light neutral, so that dark and grey tiles both stand out.
BACKGROUND = (236, 236, 236)
STALE = (200, 40, 40)


def display(r: np.ndarray) -> np.ndarray:
    """uint8 [R, R, 3] of a reconstruction float [3, R, R]: 0.5 + 0.5 * r / max|r|."""
    r = np.asarray(r, np.float32)
    peak = float(np.max(np.abs(r))) if r.size else 0.0
    scaled = 0.5 + 0.5 * r / peak if peak > 0 and math.isfinite(peak) else np.full_like(r, 0.5)
    return _to_uint8(np.moveaxis(scaled, 0, -1))


def unnormalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 255.0,
                channel_order: str = "RGB") -> np.ndarray:
    """uint8 [H, W, 3] RGB of a preprocessed float [3, H, W] (the inverse of the model's
    normalisation: pixel = (x * std + mean) * scale, channels back to RGB)."""
    x = np.asarray(x, np.float32)
    if channel_order.upper() == "BGR":
        x = x[::-1]
    rgb = (x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]) * scale
    return np.clip(np.rint(np.moveaxis(rgb, 0, -1)), 0, 255).astype(np.uint8)


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box (top, left, bottom, right; half-open, may run off the image) of a channel-first
    [C, H, W] array, zero where it runs off the image."""
    top, left, bottom, right = box
    c, h, w = image.shape
    out = np.zeros((c, bottom - top, right - left), image.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    return out


def grid(tiles: Sequence[np.ndarray | None], cols: int | None = None, pad: int = 1,
         background: tuple[int, int, int] = BACKGROUND, min_tile: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: equal-sized uint8 tiles [h, w, 3] in row-major order, `cols` wide
    (default ceil(sqrt(n)), so 9 tiles make 3 x 3), `pad` pixels apart and around. A None tile
    leaves its cell empty (a unit with fewer than k images). Tiles smaller than `min_tile` are
    enlarged by an integer factor (nearest neighbour, so pixels stay sharp)."""
    real = [t for t in tiles if t is not None]
    if not real:
        raise ValueError("grid needs at least one tile")
    factor = max(1, -(-min_tile // max(real[0].shape[:2]))) if min_tile else 1
    th, tw = real[0].shape[0] * factor, real[0].shape[1] * factor
    n = len(tiles)
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = -(-n // cols)
    out = np.empty((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), np.uint8)
    out[...] = background
    for i, t in enumerate(tiles):
        if t is None:
            continue
        t = enlarge(t, factor)
        y, x = pad + (i // cols) * (th + pad), pad + (i % cols) * (tw + pad)
        out[y:y + th, x:x + tw] = t
    return out


def stale_tile(h: int, w: int) -> np.ndarray:
    """A tile marking a (unit, rank) whose recomputed activation did not match results.db:
    red diagonal hatching, so a stale entry is never mistaken for a picture."""
    yy, xx = np.mgrid[0:h, 0:w]
    tile = np.empty((h, w, 3), np.uint8)
    tile[...] = 255
    tile[(yy + xx) % max(4, h // 6) < max(1, h // 24)] = STALE
    return tile


def filter_tiles(weights: np.ndarray, pad: int = 1, min_tile: int = 24) -> np.ndarray:
    """uint8 grid of first-layer filters float [C_out, 3, kh, kw] as RGB tiles, each scaled on its
    own like a reconstruction (0.5 + 0.5 * w / max|w|). A layer with other than 3 input channels
    shows the mean over its input channels as grey."""
    w = np.asarray(weights, np.float32)
    if w.ndim != 4:
        raise ValueError(f"filters must be [C_out, C_in, kh, kw], got shape {list(w.shape)}")
    if w.shape[1] != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    return grid([display(f) for f in w], pad=pad, min_tile=min_tile)


def pair(recon_grid: np.ndarray, patch_grid: np.ndarray, gap: int = 4,
         background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Reconstructions | patches side by side (Fig. 2's unit layout), `gap` pixels apart."""
    h = max(recon_grid.shape[0], patch_grid.shape[0])
    out = np.empty((h, recon_grid.shape[1] + gap + patch_grid.shape[1], 3), np.uint8)
    out[...] = background
    out[:recon_grid.shape[0], :recon_grid.shape[1]] = recon_grid
    out[:patch_grid.shape[0], recon_grid.shape[1] + gap:] = patch_grid
    return out


def montage(pairs: Sequence[np.ndarray], cols: int = 4, gap: int = 8,
            background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Paper-style figure of one layer: unit pairs (see `pair`) in a grid, `gap` pixels apart."""
    if not pairs:
        raise ValueError("montage needs at least one unit")
    h = max(p.shape[0] for p in pairs)
    w = max(p.shape[1] for p in pairs)
    cells = [np.pad(p, ((0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0)), constant_values=255) for p in pairs]
    return grid(cells, cols=min(cols, len(cells)), pad=gap, background=background)


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """`image` [h, w, ...] enlarged `factor` times by pixel repetition (small maps stay sharp)."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] as PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="PNG", optimize=False, compress_level=1)
    os.replace(tmp, path)
    return path


def save_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 92) -> Path:
    """Write uint8 [H, W, 3] as JPEG atomically (thumbnails of whole images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)
    return path


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
