"""The graph compiler: what cnnviz_fast needs to know about an ONNX CNN.

`cnnviz_fast.Model` is the entry point; this package holds its parts and the types it returns:
`Layer` (a tapped tensor with its receptive-field geometry), `ReversePlan` (the deconvnet plan of a
layer: a graph of `Adjoint` steps wired by tensor name, cut into `Part`s around native unpools),
the step types, `OrtSegment` / `build_segment` (chain steps as ONNX Runtime models), the one ONNX
builder (`Builder`, `make_model`, `OPSET`, `IR_VERSION`) and the errors `UnsupportedOp` and
`InvalidModel`.
"""
from ._layers import Layer
from ._onnx import IR_VERSION, OPSET, Builder, make_model
from ._reverse import Part, ReversePlan
from ._segments import MODES, OrtSegment, build_segment, emit_adjoints
from ._steps import (Adjoint, AvgPoolT, ConvT, GemmT, Identity, Local, PadCrop, Relu, Reshape, Scale, Step,
                     Unpool)
from .errors import InvalidModel, UnsupportedOp

__all__ = [
    "Layer", "ReversePlan", "OrtSegment", "build_segment", "MODES", "UnsupportedOp", "InvalidModel",
    "Step", "ConvT", "GemmT", "Reshape", "Relu", "Unpool", "AvgPoolT", "PadCrop", "Scale", "Identity",
    "Local", "Adjoint", "Part", "emit_adjoints", "Builder", "make_model", "OPSET", "IR_VERSION",
]
from .model import Model  # noqa: E402  (the compiler's entry; imports the modules above)

__all__ += ["Model"]
