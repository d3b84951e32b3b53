"""Pass 2's engine: deconvnet projections of single activations back to pixel space.

`Projector` runs a layer's reverse plan (graph compiler) as ONNX Runtime sessions alternating with
the native `unpool`, on the CPU or on CUDA, full-frame or inside each seed's receptive-field
window; `Forward` holds one image batch's forward results (taps, uint8 switches) for reuse across
layers. `DeviceUnavailable` is raised when device="cuda" cannot be honoured.
"""
from ._device import DeviceUnavailable
from ._forward import Forward
from .projector import Projector

__all__ = ["Projector", "Forward", "DeviceUnavailable"]
