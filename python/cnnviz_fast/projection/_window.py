"""Where each tensor of a reverse pass lives: full maps, or per-seed windows of a fixed size.

A seed at tap position (y, x) only reaches its receptive field, so every tensor on the way back
can be computed inside a window whose size is fixed per layer and whose origin is affine in the
seed position: origin = (y * jump + start) per axis. Walking the plan's steps, a ConvT or Unpool
(forward kernel k, stride s, dilation d, leading pad p) turns a window of size h at origin o into
one of size (h - 1) * s + d * (k - 1) + 1 at origin o * s - p; ReLUs, constant scales and
identities keep it. At the image the window is the layer's receptive-field box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import AvgPoolT, ConvT, Identity, Relu, Scale, Step, Unpool


@dataclass(frozen=True)
class Level:
    """One tensor of the reverse pass as computed per seed.

    `channels`; `size` (h, w) computed per seed; `map` (H, W) of the forward tensor; per axis
    `jump` and `start` place a seed's window (full maps: size = map, jump 0, start 0). Tensors
    without spatial axes ([N, C], fully connected) have `size` and `map` None.
    """

    channels: int
    size: tuple[int, int] | None
    map: tuple[int, int] | None
    jump: tuple[int, int] = (0, 0)
    start: tuple[int, int] = (0, 0)

    @property
    def spatial(self) -> bool:
        return self.size is not None

    def origins(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window origins (rows, cols) in map coordinates of seeds at tap positions (ys, xs)."""
        return ys * self.jump[0] + self.start[0], xs * self.jump[1] + self.start[1]


def full_levels(steps: list[Step]) -> list[Level]:
    """Levels of a full-frame pass: before each step, then after the last."""
    shapes = [steps[0].in_shape] + [s.out_shape for s in steps]
    return [_full(shape) for shape in shapes]


def window_levels(steps: list[Step]) -> list[Level] | None:
    """Levels of a windowed pass, or None when some step cannot be computed in a window."""
    first = steps[0].in_shape
    if len(first) != 3:
        return None
    levels = [Level(first[0], (1, 1), tuple(first[1:]), (1, 1), (0, 0))]
    for step in steps:
        cur = levels[-1]
        if len(step.out_shape) != 3:
            return None
        out_map = tuple(step.out_shape[1:])
        if isinstance(step, (ConvT, Unpool)):
            k = step.weight.shape[2:] if isinstance(step, ConvT) else step.kernel
            size = tuple((cur.size[a] - 1) * step.strides[a] + step.dilations[a] * (k[a] - 1) + 1
                         for a in range(2))
            jump = tuple(cur.jump[a] * step.strides[a] for a in range(2))
            start = tuple(cur.start[a] * step.strides[a] - step.pads[a] for a in range(2))
            levels.append(Level(step.out_shape[0], size, out_map, jump, start))
        elif _keeps_window(step):
            levels.append(Level(step.out_shape[0], cur.size, out_map, cur.jump, cur.start))
        else:
            return None
    return levels


def window_cost(steps: list[Step], levels: list[Level]) -> int:
    """Multiply-adds of the transposed convolutions per seed (what dominates a pass)."""
    total = 0
    for step, level in zip(steps, levels):
        if isinstance(step, ConvT) and level.spatial:
            cin, cout_g, kh, kw = step.weight.shape
            total += cin * cout_g * kh * kw * level.size[0] * level.size[1]
    return total


def _keeps_window(step: Step) -> bool:
    if step.in_shape != step.out_shape:
        return False
    if isinstance(step, (Relu, Identity)):
        return True
    if isinstance(step, AvgPoolT):
        return step.is_identity
    # A per-channel (or scalar) factor commutes with cropping; one that varies over space does not.
    if not isinstance(step, Scale):
        return False
    f = step.factor
    return f.size == 1 or (f.ndim == 3 and f.shape[1:] == (1, 1))


def _full(shape: tuple[int, ...]) -> Level:
    if len(shape) == 3:
        return Level(shape[0], tuple(shape[1:]), tuple(shape[1:]))
    if len(shape) == 1:
        return Level(shape[0], None, None)
    raise ValueError(f"the projector handles [C, H, W] and [C] tensors, not {list(shape)}")


def window_index(n: np.ndarray, top: np.ndarray, left: np.ndarray, size: tuple[int, int],
                 map_hw: tuple[int, int], images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows to gather from a map flattened as [images * H * W + 1, C] (last row: the fill value).

    Returns (index int64 [S, h, w], rows_inside bool [S, h], cols_inside bool [S, w]) for windows
    of `size` at (top, left) of image n; positions off the map point at the fill row.
    """
    (h, w), (H, W) = size, map_hw
    rows = top[:, None] + np.arange(h)[None, :]
    cols = left[:, None] + np.arange(w)[None, :]
    r_in = (rows >= 0) & (rows < H)
    c_in = (cols >= 0) & (cols < W)
    flat = (n[:, None, None] * (H * W) + rows[:, :, None] * W + cols[:, None, :]).astype(np.int64)
    inside = r_in[:, :, None] & c_in[:, None, :]
    return np.where(inside, flat, np.int64(images * H * W)), r_in, c_in
