"""What this process can run on: the native build, the GPU, and ONNX Runtime's providers."""
from __future__ import annotations

import ctypes
import functools
from typing import Any


def build_info() -> dict[str, Any]:
    """The native extension's build: CUDA compiled and for which architectures, OpenMP, version."""
    from . import _C

    return dict(_C.build_info())


@functools.lru_cache(maxsize=None)
def gpu_count() -> tuple[int, str]:
    """(number of NVIDIA GPUs the driver exposes, how that was found out or why none).

    Asks the CUDA driver directly (libcuda), so the answer does not depend on whether this build
    or ONNX Runtime has CUDA support.
    """
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return 0, "the NVIDIA driver is present but cuInit failed (no usable GPU)"
    n = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0:
        return 0, "cuDeviceGetCount failed"
    return n.value, f"{n.value} GPU(s) visible to the driver"


@functools.lru_cache(maxsize=None)
def ort_cuda_status() -> tuple[bool, str]:
    """(ONNX Runtime's CUDA EP can run here, why or why not).

    onnxruntime-gpu lists CUDAExecutionProvider as available even where its CUDA/cuDNN libraries or
    a GPU are missing; the only reliable check is to open a session with it and see what it kept.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: pip install onnxruntime-gpu"
    n, why = gpu_count()
    if n == 0:
        return False, why
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as exc:  # ORT raises plain RuntimeErrors/Fail here
        return False, f"ONNX Runtime could not create a CUDA session: {exc}"
    if "CUDAExecutionProvider" not in sess.get_providers():
        return False, ("ONNX Runtime's CUDA EP failed to load (CUDA 12/13 runtime or cuDNN 9 libraries missing?): "
                       "pip install 'cnnviz_fast[cuda]' installs them as wheels")
    return True, "ONNX Runtime CUDA EP loaded"
