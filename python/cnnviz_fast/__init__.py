"""cnnviz_fast: what each unit of a CNN has learned, at ImageNet scale.

For every unit of the chosen layers, the k dataset images that excite it most, each projected back
to pixels with the Zeiler & Fergus (2014) deconvnet. Forward passes run as ONNX graphs in ONNX
Runtime; switch pooling, unpooling, per-unit max and top-k run in native kernels (`cnnviz_fast._C`,
CPU and CUDA).
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnviz_fast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Public names, imported on first use so that `import cnnviz_fast` stays cheap (no onnx/ORT load).
_LAZY = {
    "Model": "cnnviz_fast.graph",
    "Layer": "cnnviz_fast.graph",
    "UnsupportedOp": "cnnviz_fast.graph",
    "build_info": "cnnviz_fast.runtime",
    "mine": "cnnviz_fast.mining",
    "Projector": "cnnviz_fast.projection",
    "report": "cnnviz_fast.reporting",
    "project": "cnnviz_fast.projection",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnviz_fast' has no attribute {name!r}")
