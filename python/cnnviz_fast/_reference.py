"""Naive NumPy references for the native kernels in ``cnnviz_fast._C``.

Each function is the plain loop that states an op's rules; the tests hold the C++ and CUDA twins
to these. They are written to be read, not to be fast. The loop that carries a rule is explicit
(window offsets in row-major order for switch_pool, windows for unpool's scatter, maps for
unit_max); NumPy does only the independent, identical iterations around it (all windows of one
offset, all planes of one window, all units of a top-k merge sorted at once).

Geometry arguments follow the native API:

- ``kernel``, ``stride``, ``dilation``: an int or ``(h, w)``; ``stride=None`` means the kernel.
- ``padding``: an int, ``(ph, pw)`` or ``(top, left, bottom, right)`` (asymmetric, as ONNX pads).
"""

from __future__ import annotations

import numpy as np

NO_SWITCH = 255
"""Switch of a window that lies wholly in padding; unpool skips it."""

__all__ = [
    "NO_SWITCH",
    "pool_geometry",
    "pool_output_size",
    "switch_pool",
    "unpool",
    "switch_input_index",
    "unit_max",
    "topk_merge",
]


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(t) for t in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v}")
    return v


def _pads(padding):
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return p, p, p, p
    p = tuple(int(t) for t in padding)
    if len(p) == 2:
        return p[0], p[1], p[0], p[1]
    if len(p) == 4:
        return p
    raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right), got {p}")


def pool_geometry(kernel, stride=None, padding=0, dilation=1):
    """Normalise pooling arguments to ``((kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw))``."""
    k = _pair(kernel, "kernel")
    s = k if stride is None else _pair(stride, "stride")
    p = _pads(padding)
    d = _pair(dilation, "dilation")
    if min(k) < 1 or min(s) < 1 or min(d) < 1:
        raise ValueError("kernel, stride and dilation must be >= 1")
    if min(p) < 0:
        raise ValueError("padding must be >= 0")
    if k[0] * k[1] > NO_SWITCH:
        raise ValueError(f"kernel {k} has more than {NO_SWITCH} elements; switches are uint8")
    return k, s, p, d


def _out_len(size, k, s, lead, trail, d, ceil_mode):
    span = size + lead + trail - d * (k - 1) - 1
    if span < 0:
        raise ValueError(f"pooling window ({k}, dilation {d}) is larger than the padded input ({size + lead + trail})")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # PyTorch's rule: with ceil_mode the last window must start inside the input or the leading
    # padding, never wholly in the trailing padding.
    if ceil_mode and (out - 1) * s >= size + lead:
        out -= 1
    return out


def pool_output_size(H, W, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Output ``(OH, OW)`` of pooling an ``H x W`` map, as PyTorch computes it.

    ``OH = floor_or_ceil((H + top + bottom - dh*(kh-1) - 1) / sh) + 1``; with ``ceil_mode`` the
    last window must start inside the input or the leading padding (``(OH-1)*sh >= H + top``
    drops it). Raises ValueError when the dilated window does not fit the padded input.
    """
    (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw) = pool_geometry(kernel, stride, padding, dilation)
    return (
        _out_len(H, kh, sh, top, bottom, dh, ceil_mode),
        _out_len(W, kw, sw, left, right, dw, ceil_mode),
    )


def switch_pool(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling that records where in each window the max came from.

    x: float32 [N, C, H, W]. Returns ``(y, switches)``: y float32 [N, C, OH, OW], switches uint8.
    The window of output (oh, ow) reads input ``(oh*sh - top + ky*dh, ow*sw - left + kx*dw)``
    for ky < kh, kx < kw; positions outside the input are padding and never win.

    - The switch is ``ky*kw + kx`` of the first maximum in row-major window order.
    - NaN is a maximum: the first NaN in window order wins and y is NaN.
    - The first element inside the input is taken even when it is -inf.
    - A window wholly in padding gives y = -inf and switch 255.
    """
    x = np.asarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (top, left, _, _), (dh, dw) = pool_geometry(kernel, stride, padding, dilation)
    OH, OW = pool_output_size(H, W, kernel, stride, padding, dilation, ceil_mode)
    y = np.full((N, C, OH, OW), -np.inf, dtype=np.float32)
    switches = np.full((N, C, OH, OW), NO_SWITCH, dtype=np.uint8)
    # Window offsets in row-major order; each step compares that element of every window at once.
    for ky in range(kh):
        for kx in range(kw):
            ih = np.arange(OH) * sh - top + ky * dh
            iw = np.arange(OW) * sw - left + kx * dw
            inside = ((ih >= 0) & (ih < H))[:, None] & ((iw >= 0) & (iw < W))[None, :]
            if not inside.any():
                continue
            v = x[:, :, np.clip(ih, 0, H - 1)][:, :, :, np.clip(iw, 0, W - 1)]
            # A window still at 255 has taken nothing yet: its first element inside the input wins.
            first = switches == NO_SWITCH
            # v > y is False once y is NaN, so the first NaN stays.
            beats = (np.isnan(v) & ~np.isnan(y)) | (v > y)
            take = inside & (first | beats)
            y = np.where(take, v, y)
            switches = np.where(take, np.uint8(ky * kw + kx), switches)
    return y, switches


def unpool(y, switches, kernel, stride=None, padding=0, dilation=1, output_size=None):
    """The adjoint of :func:`switch_pool` with the same geometry, written as the scatter.

    y: float32 [N, C, OH, OW], switches uint8 [N, C, OH, OW], output_size (H, W). Returns x float32
    [N, C, H, W]: every window adds its y into the input location its switch names. Switch 255,
    and any switch that names no location inside the input, contributes nothing.

    Windows are visited in reverse row-major order, so every location receives its terms in the
    order (ky ascending, kx ascending) — the order the native gather adds them in — and the float32
    sums are bit-identical to the kernels'.
    """
    y = np.asarray(y, dtype=np.float32)
    switches = np.asarray(switches)
    if switches.shape != y.shape:
        raise ValueError(f"switches shape {switches.shape} != y shape {y.shape}")
    if output_size is None:
        raise ValueError("output_size (H, W) is required")
    H, W = _pair(output_size, "output_size")
    N, C, OH, OW = y.shape
    (kh, kw), (sh, sw), (top, left, _, _), (dh, dw) = pool_geometry(kernel, stride, padding, dilation)
    x = np.zeros((N, C, H, W), dtype=np.float32)
    for oh in reversed(range(OH)):
        for ow in reversed(range(OW)):
            s = switches[:, :, oh, ow].astype(np.int64)
            ky, kx = np.divmod(s, kw)
            ih = oh * sh - top + ky * dh
            iw = ow * sw - left + kx * dw
            chosen = (s < kh * kw) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            n, c = np.nonzero(chosen)
            # +inf and -inf landing on one location give NaN, as they do in the kernels.
            with np.errstate(invalid="ignore"):
                x[n, c, ih[n, c], iw[n, c]] += y[n, c, oh, ow]
    return x


def switch_input_index(switches, kernel, stride=None, padding=0, dilation=1, input_size=None):
    """The flat input index ``ih*W + iw`` each switch names (PyTorch's ``return_indices``).

    switches: uint8 [N, C, OH, OW]; input_size (H, W). Gives int64 [N, C, OH, OW], -1 where the
    switch names no location inside the input (255, a window wholly in padding).
    """
    switches = np.asarray(switches).astype(np.int64)
    H, W = _pair(input_size, "input_size")
    (kh, kw), (sh, sw), (top, left, _, _), (dh, dw) = pool_geometry(kernel, stride, padding, dilation)
    OH, OW = switches.shape[2:]
    ky, kx = np.divmod(switches, kw)
    ih = np.arange(OH)[:, None] * sh - top + ky * dh
    iw = np.arange(OW)[None, :] * sw - left + kx * dw
    inside = (switches < kh * kw) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return np.where(inside, ih * W + iw, -1)


def unit_max(a):
    """Per (image, unit) the maximum of a feature map and where it is.

    a: float32 [N, C, H, W]. Returns ``(values float32 [N, C], positions int32 [N, C])`` with
    ``position = y*W + x`` of the first maximum in row-major order. NaN is ignored; a map with no
    number (all NaN, or H*W == 0) gives -inf and -1; a map whose numbers are all -inf gives -inf at
    the first non-NaN position.
    """
    a = np.asarray(a, dtype=np.float32)
    N, C, H, W = a.shape
    values = np.full((N, C), -np.inf, dtype=np.float32)
    positions = np.full((N, C), -1, dtype=np.int32)
    for n in range(N):
        for c in range(C):
            m = a[n, c].reshape(-1)
            numbers = ~np.isnan(m)
            if not numbers.any():
                continue
            best = m[numbers].max()
            values[n, c] = best
            positions[n, c] = np.flatnonzero(m == best)[0]
    return values, positions


def topk_merge(state_values, state_ids, state_positions, values, positions, image_ids):
    """Fold a batch into a running top-k per unit, in place, by brute force.

    State: float32 [U, k] values, int64 [U, k] image ids, int32 [U, k] positions, each row best
    first. Batch: values float32 [B, U], positions int32 [B, U], image_ids int64 [B].

    For every unit all entries of its row and of the batch are sorted by (value descending, image
    id ascending) and the first k kept. A candidate enters only if its value is a number > -inf
    (NaN and -inf never do). Empty slots hold -inf / -1 / -1 and come last.
    """
    values = np.asarray(values, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int32)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    U, k = state_values.shape
    B = values.shape[0]
    # Row u lists every candidate of unit u: its k state slots, then the B new scores.
    cand_values = np.concatenate([state_values, values.T], axis=1)
    cand_ids = np.concatenate([state_ids, np.broadcast_to(image_ids, (U, B))], axis=1)
    cand_positions = np.concatenate([state_positions, positions.T], axis=1)
    rejected = np.isnan(cand_values) | (cand_values == -np.inf)
    # lexsort's last key is the primary one: entries first, then value descending, then id ascending.
    order = np.lexsort((cand_ids, -cand_values, rejected), axis=1)[:, :k]
    kept = ~np.take_along_axis(rejected, order, axis=1)
    state_values[...] = np.where(kept, np.take_along_axis(cand_values, order, axis=1), -np.inf)
    state_ids[...] = np.where(kept, np.take_along_axis(cand_ids, order, axis=1), -1)
    state_positions[...] = np.where(kept, np.take_along_axis(cand_positions, order, axis=1), -1)
