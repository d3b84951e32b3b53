"""The steps of a reverse (deconvnet) plan, each the adjoint of one forward node.

Every step maps a signal shaped like the forward node's output (`in_shape`, batch dim left out)
to one shaped like the forward node's data input (`out_shape`). `node` and `op_type` name the
forward node. Geometry follows ONNX: pads are (top, left, bottom, right), sizes (h, w).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True, eq=False)
class Step:
    node: str
    op_type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    native: ClassVar[bool] = False


@dataclass(frozen=True, eq=False)
class ConvT(Step):
    """Conv -> ConvTranspose with the Conv's `weight` [Cout, Cin/group, kh, kw], no bias."""

    weight: np.ndarray
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int


@dataclass(frozen=True, eq=False)
class GemmT(Step):
    """Gemm / MatMul -> multiply by the transposed weight: dx = dy @ matrix, matrix [out, in]."""

    matrix: np.ndarray


@dataclass(frozen=True, eq=False)
class Reshape(Step):
    """Flatten / Reshape / Squeeze / Unsqueeze -> reshape back to `out_shape`."""


@dataclass(frozen=True, eq=False)
class Relu(Step):
    """Relu: deconvnet applies relu to the signal; guided / gradient also mask it with
    `tensor` > 0, the forward ReLU's output."""

    tensor: str


@dataclass(frozen=True, eq=False)
class Unpool(Step):
    """MaxPool -> native unpool with the switches recorded by the native switch_pool on
    `input_tensor` (the MaxPool's input; `output_tensor` its output) with this geometry.

    in_shape is (C, OH, OW), out_shape (C, H, W): call
    `_C.switch_pool(fwd[input_tensor], kernel, strides, pads, dilations, ceil_mode)` then
    `_C.unpool(signal, switches, kernel, strides, pads, dilations, output_size=out_shape[1:])`.
    """

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    ceil_mode: bool
    input_tensor: str
    output_tensor: str

    native: ClassVar[bool] = True


@dataclass(frozen=True, eq=False)
class AvgPoolT(Step):
    """AveragePool / GlobalAveragePool -> its adjoint: scale each output by its own
    1/divisor (`inv_divisor` [OH, OW], taken from ONNX Runtime's forward so count_include_pad and
    ceil_mode match it exactly), then spread it over the window (a ConvTranspose with a ones
    kernel, one group per channel)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool
    inv_divisor: np.ndarray

    @property
    def is_identity(self) -> bool:
        return (self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.pads)
                and self.in_shape == self.out_shape and bool(np.all(self.inv_divisor == 1)))


@dataclass(frozen=True, eq=False)
class PadCrop(Step):
    """Constant Pad -> crop: remove `pads` (c, h, w begins then c, h, w ends; a negative pad,
    i.e. a forward crop, gets zeros back)."""

    pads: tuple[int, int, int, int, int, int]


@dataclass(frozen=True, eq=False)
class Scale(Step):
    """Multiplication by a constant (Mul, Div, an unfolded BatchNormalization's scale, `c - x`):
    multiply by `factor`, broadcastable to `out_shape`."""

    factor: np.ndarray


@dataclass(frozen=True, eq=False)
class Identity(Step):
    """LRN, Dropout, Identity, adding a constant bias: nothing to do in the reverse pass."""


@dataclass(frozen=True, eq=False)
class Local(Step):
    """Any other node, reversed by its true local adjoint (vector-Jacobian product) written as ONNX
    ops at this image's forward values, or, for the linear multi-input / layout ops (Add, Sub, Sum,
    Concat, Split, Slice, Transpose, ReduceMean, Resize, ...), by their exact adjoint.

    `inputs` / `outputs` are the forward node's tensor names ("" for an absent optional input),
    `data` says which inputs carry image data, `shapes` / `out_shapes` their shapes without the
    batch dimension (None where unknown and not needed), `attrs` the node's attributes,
    `constants` the constant inputs by position, `forward` the forward tensors the adjoint reads
    (gathered per seed), `extra` precomputed arrays (e.g. a Resize's interpolation matrices).
    `in_shape` is the first output's shape, `out_shape` the first data input's.
    """

    inputs: tuple[str, ...]
    data: tuple[bool, ...]
    shapes: tuple
    outputs: tuple[str, ...]
    out_shapes: tuple
    attrs: dict
    constants: dict
    forward: tuple[str, ...]
    extra: dict


@dataclass(frozen=True, eq=False)
class Adjoint:
    """One step of a graph plan, wired by tensor name: `step` reads the signals of the forward
    tensors `outputs` (for non-Local steps: one) and sends one signal to each of `inputs` (the
    node's image-dependent inputs, in input order, repeated where the node reads a tensor twice)."""

    step: Step
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
