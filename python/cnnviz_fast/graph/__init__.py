"""The graph compiler: what cnnviz_fast needs to know about an ONNX CNN.

`cnnviz_fast.Model` is the entry point; this package holds its parts and the types it returns:
`Layer` (a tapped tensor with its receptive-field geometry), `ReversePlan` (the deconvnet path of a
layer as steps), the step types, `OrtSegment` / `build_segment` (steps as ONNX Runtime models), and
the errors `UnsupportedOp` and `InvalidModel`.
"""
from ._layers import Layer
from ._reverse import ReversePlan
from ._segments import MODES, OrtSegment, build_segment
from ._steps import AvgPoolT, ConvT, GemmT, Identity, PadCrop, Relu, Reshape, Scale, Step, Unpool
from .errors import InvalidModel, UnsupportedOp

__all__ = [
    "Layer", "ReversePlan", "OrtSegment", "build_segment", "MODES", "UnsupportedOp", "InvalidModel",
    "Step", "ConvT", "GemmT", "Reshape", "Relu", "Unpool", "AvgPoolT", "PadCrop", "Scale", "Identity",
]
from .model import Model  # noqa: E402  (the compiler's entry; imports the modules above)

__all__ += ["Model"]
