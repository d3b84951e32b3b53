"""Where mining runs: `auto` picks CUDA only when every piece can run there; `cuda` that cannot be
honoured raises with the reason and the fix; never a silent fallback."""
from __future__ import annotations

from .errors import DeviceUnavailable


def cuda_blocker() -> str | None:
    """None when CUDA mining can run here, else why not and how to fix it."""
    from .._runtime import build_info, gpu_count, ort_cuda_status

    if not build_info()["cuda"]:
        return ("cnnviz_fast's native module was built without CUDA kernels (the device-resident "
                "top-k needs them): rebuild on a machine with nvcc, e.g. CNNVIZ_CUDA=ON pip install -e .")
    n, why = gpu_count()
    if n == 0:
        return f"no GPU: {why}"
    ok, why = ort_cuda_status()
    if not ok:
        return why
    return None


def resolve_device(requested: str) -> tuple[str, str]:
    """("cpu" | "cuda", a sentence saying what was chosen and why)."""
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return "cpu", "device: cpu (asked for)"
    blocker = cuda_blocker()
    if requested == "cuda":
        if blocker is not None:
            raise DeviceUnavailable(f"--device cuda cannot be used: {blocker}")
        return "cuda", "device: cuda (asked for)"
    if blocker is None:
        return "cuda", "device: cuda (auto: native CUDA kernels, a GPU and ONNX Runtime's CUDA EP are all present)"
    return "cpu", f"device: cpu (auto: CUDA not usable — {blocker})"
