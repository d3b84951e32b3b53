"""Deterministic synthetic images: oriented lines, edges, circles, stripes, checkerboards, grids
and colour blobs on varied backgrounds, one class per pattern family. Patterns always differ
from their background in brightness, and most pattern images are drawn in muted colour (as
edges in photographs mostly are), the colour blobs always in vivid colour.

Every image is a pure function of (seed, label, size): the random stream is
`numpy.random.default_rng([seed, label])` (PCG64, platform independent) and all rendering is
NumPy arithmetic, with no fonts, drawing library or global state involved. The only possible
cross-machine difference is a last-ulp change in a vectorised sin/exp moving a rare pixel by
one level. Geometry is drawn in units of the image side, so one (seed, label) at two sizes is
the same scene at two resolutions (pixel noise aside).

Shapes are rendered as coverage masks on a 4x supersampled grid and box-averaged down, which
anti-aliases edges without depending on any drawing library. Angles are in degrees,
counter-clockwise from the horizontal as the image is viewed (image y points down).

`generate` writes JPEG files in an ImageNet-like tree, `out_dir/<class>/<index:06d>.jpg`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = (
    "lines_0",
    "lines_45",
    "lines_90",
    "lines_135",
    "edges",
    "circles",
    "stripes",
    "checkerboard",
    "grid",
    "colour_blobs",
)

_SUPERSAMPLE = 4
_LUMA = np.array([0.299, 0.587, 0.114])
# The share of pattern images (all classes but colour_blobs) drawn with muted colour.
_MUTED = 0.7


@lru_cache(maxsize=8)
def _grid(size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size*step grid, in units of output pixels."""
    c = (np.arange(size * step, dtype=np.float32) + np.float32(0.5)) / np.float32(step)
    return c[None, :], c[:, None]


def _window(size: int, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
    """Output-pixel rows and columns of the box around (cx, cy), clipped to the image.

    Shapes much smaller than the image are rasterised only there, which keeps drawing fast.
    """
    def span(c: float) -> slice:
        lo, hi = int(np.floor(c - radius)), int(np.ceil(c + radius))
        return slice(min(max(lo, 0), size), min(max(hi, 0), size))
    return span(cy), span(cx)


def _local_grid(size: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """The supersampled coordinates (x, y) that fall inside a `_window`."""
    x, y = _grid(size, _SUPERSAMPLE)
    s = _SUPERSAMPLE
    return x[:, cols.start * s:cols.stop * s], y[rows.start * s:rows.stop * s, :]


def _coverage(inside: np.ndarray) -> np.ndarray:
    """Box-average a supersampled boolean mask down to output-pixel coverage in [0, 1]."""
    s = _SUPERSAMPLE
    h, w = inside.shape[0] // s, inside.shape[1] // s
    return inside.reshape(h, s, w, s).mean(axis=(1, 3))


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    img *= 1.0 - alpha[..., None]
    img += alpha[..., None] * colour


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB values [..., 3]."""
    return rgb @ _LUMA


def _contrasting(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """A random colour far enough from `ref`, in colour and in brightness, that the pattern is
    visible on its background even once `_mute` has taken most of the colour away."""
    for _ in range(16):
        c = rng.uniform(0.0, 255.0, 3)
        if np.linalg.norm(c - ref) > 130.0 and abs(_luma(c) - _luma(ref)) > 60.0:
            return c
    return np.full(3, 0.0 if _luma(ref) > 127.5 else 255.0)


def _mute(rng: np.random.Generator, img: np.ndarray) -> None:
    """Keep a random 0-40 % of the colour around each pixel's luma, in place. Edges in photographs
    are mostly brightness edges with a little colour; so muted, most pattern images teach a first
    conv layer oriented luminance edges, while the colour blobs class keeps it learning colour."""
    grey = _luma(img)[..., None]
    img[...] = grey + rng.uniform(0.0, 0.4) * (img - grey)


def _saturated(rng: np.random.Generator) -> np.ndarray:
    """A vivid colour: random hue, high saturation and value (HSV -> RGB)."""
    h, s, v = rng.uniform(0.0, 6.0), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h) % 6.0
    return 255.0 * v * (1.0 - s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Bilinearly interpolated random lattice: low-frequency colour variation, [size, size, 3]."""
    lattice = rng.normal(0.0, amp, (cells + 1, cells + 1, 3))
    t = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(t.astype(int), cells - 1)
    f = (t - i)[:, None]
    rows = lattice[i] * (1 - f[..., None]) + lattice[i + 1] * f[..., None]
    fc = f.T[..., None]
    return rows[:, i] * (1 - fc) + rows[:, i + 1] * fc


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Flat colour, linear gradient or flat colour with low-frequency noise, float [size, size, 3]."""
    kind = rng.integers(3)
    base = rng.uniform(0.0, 255.0, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == 1:
        other = rng.uniform(0.0, 255.0, 3)
        theta = np.deg2rad(rng.uniform(0.0, 360.0))
        x, y = _grid(size, 1)
        t = (x * np.cos(theta) - y * np.sin(theta)) / size
        t = (t - t.min()) / (t.max() - t.min())
        img += t[..., None] * (other - base)
    elif kind == 2:
        img += _smooth_noise(rng, size, int(rng.integers(2, 6)), rng.uniform(10.0, 30.0))
    return img


def _direction(angle_deg: float) -> tuple[float, float]:
    """Unit vector along `angle_deg` in image coordinates (y down, so the y part is negated)."""
    a = np.deg2rad(angle_deg)
    return float(np.cos(a)), float(-np.sin(a))


def _lines(base_angle: float):
    """Painter for one to five straight segments within 8 degrees of `base_angle`."""
    def paint(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
        ref = img.mean(axis=(0, 1))
        for _ in range(int(rng.integers(1, 6))):
            dx, dy = _direction(base_angle + rng.uniform(-8.0, 8.0))
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
            half_len = rng.uniform(0.15, 0.45) * size
            half_width = rng.uniform(0.5, 2.0) * size / 64
            rows, cols = _window(size, cx, cy, half_len + half_width)
            x, y = _local_grid(size, rows, cols)
            along = (x - cx) * dx + (y - cy) * dy
            across = -(x - cx) * dy + (y - cy) * dx
            inside = (np.abs(along) <= half_len) & (np.abs(across) <= half_width)
            _paint(img[rows, cols], _coverage(inside), _contrasting(rng, ref))
    return paint


def _edges(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """One or two straight step edges between regions of different colour."""
    x, y = _grid(size, _SUPERSAMPLE)
    for _ in range(int(rng.integers(1, 3))):
        nx, ny = _direction(rng.uniform(0.0, 360.0))
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        inside = (x - cx) * nx + (y - cy) * ny > 0
        _paint(img, _coverage(inside), _contrasting(rng, img.mean(axis=(0, 1))))


def _circles(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Filled discs and ring outlines of random radius, some cut by the border."""
    ref = img.mean(axis=(0, 1))
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        r = rng.uniform(0.06, 0.3) * size
        filled = rng.random() < 0.5
        half_width = rng.uniform(0.5, 2.0) * size / 64
        rows, cols = _window(size, cx, cy, r + half_width)
        x, y = _local_grid(size, rows, cols)
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        inside = d <= r if filled else np.abs(d - r) <= half_width
        _paint(img[rows, cols], _coverage(inside), _contrasting(rng, ref))


def _stripes(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Full-field periodic bands at any orientation, square or sinusoidal profile."""
    x, y = _grid(size, _SUPERSAMPLE)
    dx, dy = _direction(rng.uniform(0.0, 180.0))
    period = rng.uniform(5.0, 16.0) * size / 64
    phase = (x * dx + y * dy) / period + rng.random()
    if rng.random() < 0.3:
        alpha = _coverage(0.5 + 0.5 * np.sin(2 * np.pi * phase))
    else:
        alpha = _coverage(phase % 1.0 < rng.uniform(0.3, 0.6))
    _paint(img, alpha, _contrasting(rng, img.mean(axis=(0, 1))))


def _checkerboard(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """A full-field checkerboard, rotated, with random cell size and phase."""
    x, y = _grid(size, _SUPERSAMPLE)
    dx, dy = _direction(rng.uniform(0.0, 90.0))
    cell = rng.uniform(4.0, 12.0) * size / 64
    u = (x * dx + y * dy) / cell + rng.random()
    v = (-x * dy + y * dx) / cell + rng.random()
    inside = (np.floor(u) + np.floor(v)) % 2 == 0
    _paint(img, _coverage(inside), _contrasting(rng, img.mean(axis=(0, 1))))


def _grid_lines(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Two perpendicular families of thin, evenly spaced lines."""
    x, y = _grid(size, _SUPERSAMPLE)
    dx, dy = _direction(rng.uniform(0.0, 90.0))
    spacing = rng.uniform(6.0, 16.0) * size / 64
    half_width = rng.uniform(0.5, 1.25) * size / 64
    u = (x * dx + y * dy) / spacing + rng.random()
    v = (-x * dy + y * dx) / spacing + rng.random()
    w = half_width / spacing
    inside = (np.abs(u - np.round(u)) <= w) | (np.abs(v - np.round(v)) <= w)
    _paint(img, _coverage(inside), _contrasting(rng, img.mean(axis=(0, 1))))


def _colour_blobs(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Soft Gaussian blobs of vivid colour; smooth, so drawn without supersampling."""
    x, y = _grid(size, 1)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0.05, 0.95, 2) * size
        sigma = rng.uniform(0.06, 0.18) * size
        alpha = rng.uniform(0.8, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        _paint(img, alpha, _saturated(rng))


_PAINTERS = (
    _lines(0.0),
    _lines(45.0),
    _lines(90.0),
    _lines(135.0),
    _edges,
    _circles,
    _stripes,
    _checkerboard,
    _grid_lines,
    _colour_blobs,
)


def draw(seed: int, label: int, size: int = 64) -> Image.Image:
    """Draw one RGB image of class `CLASSES[label]`; a pure function of (seed, label, size)."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    rng = np.random.default_rng([seed, label])
    img = _background(rng, size)
    _PAINTERS[label](rng, img, size)
    if CLASSES[label] != "colour_blobs" and rng.random() < _MUTED:
        _mute(rng, img)
    img += rng.normal(0.0, rng.uniform(0.0, 8.0), img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def image_seed(seed: int, index: int) -> int:
    """The draw seed of image `index` of a dataset generated with `seed` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def generate(out_dir: str | Path, n: int, seed: int = 0, size: int = 64, quality: int = 90) -> list[Path]:
    """Write n JPEG images to out_dir/<class>/<index:06d>.jpg and return their paths, sorted.

    Image i has class i % len(CLASSES) and is drawn with `image_seed(seed, i)`, so a larger n
    extends a smaller one with the same images.
    """
    out = Path(out_dir)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        label = i % len(CLASSES)
        path = out / CLASSES[label] / f"{i:06d}.jpg"
        draw(image_seed(seed, i), label, size).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return sorted(paths)
