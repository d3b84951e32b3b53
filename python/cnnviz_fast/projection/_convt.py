"""A windowed stride-1 transposed convolution (no pads) written as an ordinary convolution.

ONNX Runtime's CPU ConvTranspose is a GEMM followed by a scatter (col2im); its Conv runs MLAS's
blocked kernels, 1.2-1.5x as fast on the windows a deconvnet pass computes (ResNet-18, 2 cores).
With stride 1 the two are the same linear map: ConvTranspose(x, w) without pads is the "full"
correlation of x with w flipped in space and its in / out channels swapped (per group), padded
by d * (k - 1) on every side. (Strided ones stay ConvTranspose: split into stride x stride
phase convolutions they measured slower.) The full correlation computes (h + k - 1) outputs per
axis where the scatter reads h inputs, so on the tiniest windows the ConvTranspose is kept.
"""
from __future__ import annotations

import numpy as np

from ..graph import Builder

# Most extra multiply-adds (full correlation over scatter) for which the Conv form is used; the
# Conv form measured faster up to 2.8x extra (3x3 kernel on 3x3 windows).
_MAX_EXTRA = 3.0


def uses_conv(weight_shape, strides, dilations, size) -> bool:
    """Whether `emit_conv_transpose` writes this ConvTranspose (input window `size`) as a Conv."""
    if tuple(strides) != (1, 1):
        return False
    eff = [dilations[a] * (weight_shape[2 + a] - 1) + 1 for a in range(2)]
    extra = (size[0] + eff[0] - 1) * (size[1] + eff[1] - 1) / (size[0] * size[1])
    return extra <= _MAX_EXTRA


def emit_conv_transpose(b: Builder, x: str, weight: np.ndarray, strides, dilations, group: int,
                        size: tuple[int, int]) -> str:
    """ConvTranspose(x, weight) without pads on windows of `size` (h, w); a Conv where cheaper."""
    if not uses_conv(weight.shape, strides, dilations, size):
        return b.node("ConvTranspose", [x, b.const(weight)], strides=[int(v) for v in strides],
                      dilations=[int(v) for v in dilations], group=int(group), pads=[0, 0, 0, 0])
    pads = [int(dilations[a]) * (weight.shape[2 + a] - 1) for a in range(2)] * 2
    return b.node("Conv", [x, b.const(conv_weight(weight, group))], dilations=[int(v) for v in dilations],
                  group=int(group), pads=pads)


def conv_weight(weight: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weight [Cin, Cout/g, kh, kw] as the Conv weight [Cout, Cin/g, kh, kw] of the
    same map (full correlation): channels swapped per group, flipped in space."""
    cin, cout_g, kh, kw = weight.shape
    w = weight.reshape(group, cin // group, cout_g, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(w.reshape(group * cout_g, cin // group, kh, kw)[:, :, ::-1, ::-1],
                                dtype=np.float32)
