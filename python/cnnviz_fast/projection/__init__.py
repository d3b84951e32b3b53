"""Pass 2: deconvnet projections of single activations back to pixel space.

`Projector` (the engine) runs a layer's reverse plan (graph compiler) as ONNX Runtime sessions
alternating with the native `unpool`, on the CPU or on CUDA, full-frame or inside each seed's
receptive-field window; `Forward` holds one image batch's forward results (taps, uint8 switches)
for reuse across layers. `project(out_dir)` is the pass: every top-k entry of a mined run projected,
checked against results.db, and written as grids to OUT/projections/<layer>/ (resumable per layer).

    from cnnviz_fast import project
    summary = project("out/")          # reads out/results.db, writes out/projections/<layer>/
"""
from ..errors import DeviceUnavailable, ProjectionError
from ._forward import Forward
from ._layer import MARKER
from ._pass import PROJECTIONS, ProjectionSummary, project
from .projector import Projector

__all__ = ["Projector", "Forward", "DeviceUnavailable", "project", "ProjectionSummary", "ProjectionError",
           "PROJECTIONS", "MARKER"]
