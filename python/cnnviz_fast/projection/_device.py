"""Where a projection runs: ONNX Runtime sessions, IOBinding, the native kernels, one CUDA stream.

Every tensor between steps is an `onnxruntime.OrtValue` on the device (NumPy-backed on the CPU).
ORT sessions run through IOBinding with outputs bound on the device; the native `switch_pool` and
`unpool` take them through DLPack and hand their results back the same way, so nothing crosses to
the host between steps. On CUDA, ORT gets the projector's own stream as `user_compute_stream` and
the native kernels are launched on that same stream, so their order is the program's order (ORT
also synchronises its stream at the end of each run). cuDNN is asked for deterministic algorithms
and no TF32, so the same seeds give the same bits.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np
import onnx

from ..errors import DeviceUnavailable


def resolve_device(requested: str) -> str:
    """"cpu" or "cuda" for "auto" / "cpu" / "cuda" (an explicit "cuda" that cannot run raises)."""
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {requested!r}")
    if requested == "cpu":
        return "cpu"
    blocker = cuda_blocker()
    if blocker is None:
        return "cuda"
    if requested == "cuda":
        raise DeviceUnavailable(f"device='cuda' cannot be used: {blocker}")
    return "cpu"


def cuda_blocker() -> str | None:
    """None when the projector can run on CUDA here, else why not and how to fix it."""
    from .._runtime import build_info, gpu_count, ort_cuda_status

    if not build_info()["cuda"]:
        return ("cnnviz_fast's native module was built without CUDA kernels (unpool runs there): "
                "rebuild on a machine with nvcc, e.g. CNNVIZ_CUDA=ON pip install -e .")
    n, why = gpu_count()
    if n == 0:
        return f"no GPU: {why}"
    ok, why = ort_cuda_status()
    return None if ok else why


class Device:
    """Sessions and kernels on "cpu" or "cuda"; `threads` sets ORT's intra-op pool (CPU)."""

    def __init__(self, name: str, threads: int | None = None):
        self.name = name
        self.threads = threads or _cores()
        self.stream = _new_stream() if name == "cuda" else None

    @property
    def stream_handle(self) -> int | None:
        return None if self.stream is None else self.stream.value

    def session(self, proto: onnx.ModelProto, once_per_batch: bool = False):
        """An ORT session for `proto`. On the CPU, sessions run once per image batch (forward,
        preparing switches) allocate without an arena, whose peak would stay reserved per session;
        the reverse-pass sessions, run for every seed batch, share one process-wide arena."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if once_per_batch:
            so.enable_cpu_mem_arena = False
        elif _shared_cpu_arena():
            so.add_session_config_entry("session.use_env_allocators", "1")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.name == "cuda":
            so.use_deterministic_compute = True
            providers.insert(0, ("CUDAExecutionProvider", {
                "device_id": 0, "user_compute_stream": str(self.stream_handle),
                "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": 0}))
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=providers)
        if self.name == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
            raise DeviceUnavailable("ONNX Runtime did not keep the CUDA EP for a projection graph; "
                                    "run `cnnviz-fast info` to see why")
        return sess

    def run(self, sess, feeds: dict[str, Any], outputs: list[str]) -> list:
        """Run `sess` with `feeds` (NumPy arrays on the host, OrtValues where they are) -> OrtValues."""
        binding = sess.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, self.name, 0)
        sess.run_with_iobinding(binding)
        return binding.get_outputs()

    def switches(self, x, kernel, strides, pads, dilations, ceil_mode: bool):
        """uint8 switches of max pooling `x` [N, C, H, W] (an OrtValue), as an OrtValue."""
        from .. import _C

        _, sw = _C.switch_pool(x, tuple(kernel), tuple(strides), tuple(pads), tuple(dilations),
                               bool(ceil_mode), **self._stream_arg())
        return self.wrap(sw)

    def unpool(self, y, sw, kernel, strides, pads, dilations, output_size):
        from .. import _C

        x = _C.unpool(y, sw, tuple(kernel), tuple(strides), tuple(pads), tuple(dilations),
                      tuple(output_size), **self._stream_arg())
        return self.wrap(x)

    def wrap(self, array):
        """An OrtValue for a native result (NumPy on the host, a DLPack DeviceArray on CUDA)."""
        import onnxruntime as ort

        if isinstance(array, np.ndarray):
            return ort.OrtValue.ortvalue_from_numpy(array)
        return ort.OrtValue.from_dlpack(array)

    def host(self, value) -> np.ndarray:
        """A NumPy copy of an OrtValue (waits for the device)."""
        return value.numpy()

    def _stream_arg(self) -> dict:
        return {} if self.stream is None else {"stream": self.stream_handle}


_ARENA: list[bool] = []


def _shared_cpu_arena() -> bool:
    """Register (once) a CPU arena that sessions may share; False if ORT would not have it."""
    if not _ARENA:
        import onnxruntime as ort

        mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, -1, -1, -1))
            _ARENA.append(True)
        except Exception as exc:  # ORT raises a plain RuntimeError/Fail
            # Someone else in this process registered one already: share theirs.
            _ARENA.append("already" in str(exc).lower())
    return _ARENA[0]


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _new_stream() -> ctypes.c_void_p:
    """A non-blocking CUDA stream from the runtime ONNX Runtime's CUDA EP loaded."""
    lib = _cudart()
    if lib is None:
        raise DeviceUnavailable("libcudart (CUDA runtime) not found: pip install 'cnnviz_fast[cuda]'")
    stream = ctypes.c_void_p()
    err = lib.cudaStreamCreateWithFlags(ctypes.byref(stream), ctypes.c_uint(1))  # cudaStreamNonBlocking
    if err != 0 or not stream.value:
        raise DeviceUnavailable(f"cudaStreamCreateWithFlags failed (CUDA error {err})")
    return stream


def _cudart():
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    try:
        import nvidia.cuda_runtime  # NVIDIA's wheel, as installed with onnxruntime-gpu[cuda]

        base = os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib")
        names = [os.path.join(base, n) for n in sorted(os.listdir(base)) if n.startswith("libcudart.so")] + names
    except (ImportError, OSError, IndexError):
        pass
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaStreamCreateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        return lib
    return None
