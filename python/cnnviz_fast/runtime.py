"""What this process runs on and how: device resolution, execution providers, ONNX Runtime sessions,
CUDA streams, page-locked host memory and thread counts.

Two settings are kept apart: where tensors live (`Target.memory`, "cpu" or "cuda") and which ONNX
Runtime execution provider runs a graph (`Target.provider`, a key of `PROVIDERS`). A new provider
(TensorRT, ROCm) is one `Provider` entry here. Every ONNX Runtime session in the package is created
by `session()`; streams and pinned memory come from the native module (`_C`), which owns CUDA.
"""
from __future__ import annotations

import ctypes
import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import DeviceUnavailable

def cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def build_info() -> dict[str, Any]:
    """The native extension's build: CUDA compiled and for which architectures, OpenMP, version."""
    from . import _C

    return dict(_C.build_info())


@functools.lru_cache(maxsize=None)
def gpu_count() -> tuple[int, str]:
    """(number of NVIDIA GPUs the driver exposes, how that was found out or why none).

    Asks the CUDA driver (libcuda) directly, so the answer does not depend on whether this build or
    ONNX Runtime has CUDA support, nor on their CUDA runtimes being new enough for the driver.
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
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: pip install onnxruntime-gpu"
    n, why = gpu_count()
    if n == 0:
        return False, why
    from .graph._onnx import make_model

    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], name="probe")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:  # the one session not made by session(): it must not raise when the EP is dropped
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as exc:  # ORT raises plain RuntimeErrors/Fail here
        return False, f"ONNX Runtime could not create a CUDA session: {exc}"
    if "CUDAExecutionProvider" not in sess.get_providers():
        return False, ("ONNX Runtime's CUDA EP failed to load (CUDA 12/13 runtime or cuDNN 9 libraries missing?): "
                       "pip install 'cnnviz_fast[cuda]' installs them as wheels")
    return True, "ONNX Runtime CUDA EP loaded"


def _no_blocker() -> str | None:
    return None


def native_cuda_blocker() -> str | None:
    """None when the native CUDA kernels (top-k, unit max, unpooling) can run here, else why not."""
    from . import _C

    info = build_info()
    if not info["cuda"]:
        return ("cnnviz_fast's native module was built without CUDA kernels: rebuild on a machine "
                "with nvcc, e.g. CNNVIZ_CUDA=ON pip install -e .")
    n, why = gpu_count()
    if n == 0:
        return f"no GPU: {why}"
    if _C.cuda_device_count() == 0:
        return (f"the native CUDA kernels (CUDA runtime {info['cuda_runtime_version']}) cannot use the GPU: "
                "the NVIDIA driver is older than that runtime needs; update the driver")
    return None


def cuda_blocker() -> str | None:
    """None when a "cuda" target works here (native kernels and ONNX Runtime's CUDA EP), else why not
    and how to fix it."""
    blocker = native_cuda_blocker()
    if blocker is not None:
        return blocker
    ok, why = ort_cuda_status()
    return None if ok else why


@dataclass(frozen=True)
class Provider:
    """An ONNX Runtime execution provider: its name, whether it can run here (`blocker()` is None,
    or says why not and the fix), and its options for a target and stream handle."""

    ep: str
    blocker: Callable[[], str | None]
    options: Callable[["Target", "int | None"], dict[str, str]]


def _cuda_options(target: "Target", stream: int | None) -> dict[str, str]:
    if stream is None:
        raise ValueError("a CUDA session runs on a stream its caller owns: pass stream=runtime.cuda_stream(target)")
    # The one stream policy: ORT computes on the caller's stream (user_compute_stream) and copies
    # inputs and outputs on it too (do_copy_in_default_stream: "default" is the compute stream). The
    # native kernels that consume or produce the same tensors are launched on that stream, so stream
    # order alone orders them; no reliance on ORT's end-of-run synchronisation or on the legacy
    # default stream, whose implicit synchronisation with every other stream would serialise us
    # with unrelated work.
    # HEURISTIC, not EXHAUSTIVE: a timing-based algorithm choice can differ between runs, and with it
    # the last bits of the results (a resumed run must equal an uninterrupted one). No TF32: the
    # CUDA results are compared with the CPU's.
    return {"device_id": str(target.device_id), "user_compute_stream": str(stream),
            "do_copy_in_default_stream": "1", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


PROVIDERS: dict[str, Provider] = {
    "cpu": Provider("CPUExecutionProvider", _no_blocker, lambda target, stream: {}),
    "cuda": Provider("CUDAExecutionProvider", cuda_blocker, _cuda_options),
}

# What each named device means: (where memory lives, which provider runs the graphs).
PLACEMENTS = {"cpu": ("cpu", "cpu"), "cuda": ("cuda", "cuda")}
# The values of every `device=` argument and of the CLI's --device.
DEVICES = ("auto", *PLACEMENTS)


@dataclass(frozen=True)
class Target:
    """Where a run's tensors live (`memory`: "cpu" | "cuda", on GPU `device_id`) and which provider
    (a key of PROVIDERS) runs its graphs; `reason` says how it was chosen."""

    memory: str = "cpu"
    provider: str = "cpu"
    device_id: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        """The device name results and native stores use: "cpu" or "cuda"."""
        return self.memory


CPU = Target("cpu", "cpu", 0, "device: cpu")


def resolve_device(requested: str | None, *, option: str | None = None) -> Target:
    """The target for "auto" | "cpu" | "cuda", with a sentence saying what was chosen and why.

    "auto" is CUDA exactly when everything a CUDA run needs is here, else the CPU (the sentence says
    why). An explicit "cuda" that cannot be honoured raises DeviceUnavailable with the reason and
    the fix; never a silent fallback. `option` names how the user asked in that message (e.g.
    "--device"); by default it reads `device='cuda'`.
    """
    requested = (requested or "auto").lower()
    if requested != "auto" and requested not in PLACEMENTS:
        raise ValueError(f"device must be one of {', '.join(('auto', *PLACEMENTS))}, not {requested!r}")
    if requested != "auto":
        memory, provider = PLACEMENTS[requested]
        blocker = PROVIDERS[provider].blocker()
        if blocker is not None:
            asked = f"{option} {requested}" if option else f"device={requested!r}"
            raise DeviceUnavailable(f"{asked} cannot be used: {blocker}")
        return Target(memory, provider, 0, f"device: {requested} (asked for)")
    blocker = cuda_blocker()
    if blocker is None:
        return Target("cuda", "cuda", 0, "device: cuda (auto: native CUDA kernels, a GPU and ONNX Runtime's "
                                        "CUDA EP are all present)")
    return Target("cpu", "cpu", 0, f"device: cpu (auto: CUDA not usable — {blocker})")


def as_target(device: "Target | str | None") -> Target:
    """`device` itself when it is a Target, else resolve_device(device)."""
    return device if isinstance(device, Target) else resolve_device(device)


class Stream:
    """A non-blocking CUDA stream this process owns (from `_C`); `handle` is its cudaStream_t as an
    integer, for ONNX Runtime and the native kernels' `stream=` arguments."""

    def __init__(self, device_id: int = 0):
        import weakref

        from . import _C

        try:
            self.handle: int = _C.cuda_stream_create(device_id)
        except RuntimeError as exc:
            raise DeviceUnavailable(f"cannot create a CUDA stream: {exc}") from None
        self.device_id = device_id
        self._finalizer = weakref.finalize(self, _destroy_stream, self.handle)

    def synchronize(self) -> None:
        """Wait for the work queued on the stream."""
        from . import _C

        _C.cuda_stream_synchronize(self.handle)

    def close(self) -> None:
        """Destroy the stream now (queued work still completes); later calls do nothing."""
        self._finalizer()


def _destroy_stream(handle: int) -> None:
    from . import _C

    try:
        _C.cuda_stream_destroy(handle)
    except RuntimeError:  # at interpreter exit the CUDA context may already be gone; nothing to free
        pass


def cuda_stream(target: Target) -> Stream | None:
    """A new stream for a CUDA target's device; None for a CPU target (nothing to order)."""
    return Stream(target.device_id) if target.memory == "cuda" else None


def pinned_empty(shape: tuple[int, ...], dtype=np.float32, target: Target = CPU) -> np.ndarray:
    """An uninitialised array for batches that go to `target`: in page-locked host memory for a CUDA
    target (its copies to the device then need no staging buffer, and can overlap compute), plain
    NumPy memory otherwise. The array owns the memory; it is freed with the array's last view."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if target.memory != "cuda" or nbytes == 0:
        return np.empty(shape, dtype)
    from . import _C

    try:
        raw = _C.cuda_pinned_empty(nbytes)
    except RuntimeError as exc:
        raise DeviceUnavailable(f"cannot allocate {nbytes:,} bytes of page-locked host memory: {exc}") from None
    return raw.view(dtype).reshape(shape)


ARENAS = ("session", "none", "shared")


def session(model, target: Target | str = CPU, *, threads: int | None = None, arena: str = "session",
            spinning: bool = False, mem_pattern: bool = True, deterministic: bool = False,
            stream: Stream | None = None, branches_first: bool = False, profile: str | None = None,
            what: str = "a graph"):
    """An `onnxruntime.InferenceSession` for `model` (an onnx.ModelProto, its bytes, or a path) on
    `target` (a Target, or a device name given to resolve_device), with full graph optimisation.

    threads: intra-op threads (default: cores()); one inter-op thread, graphs run sequentially.
    arena: "session" (a CPU arena per session: for sessions run on every batch), "none" (no
    arena: for sessions run once per image batch, whose peak the arena would keep reserved),
    "shared" (one process-wide CPU arena for all "shared" sessions; a per-session one where ONNX
    Runtime refuses to register it). spinning: idle intra-op threads busy-wait for work; leave it off
    where other threads (decoders, native kernels) need the cores. mem_pattern: plan allocations
    from the first run's shapes. deterministic: deterministic algorithms on CUDA (cuDNN's
    ConvTranspose, the deconvnet's op, has non-deterministic ones). stream: the Stream a CUDA
    session computes on (required there; the session keeps it alive). branches_first (CPU provider
    only): optimise the graph in a first session, order ONNX Runtime's optimised graph with
    `graph._schedule.schedule_branches_first` and run that (the taps of a mining graph: see there).
    profile: a path prefix; ONNX Runtime then records every node's run (a Chrome trace JSON that
    `end_profiling()` writes and names).
    Raises DeviceUnavailable when ONNX Runtime did not keep the target's provider; ONNX Runtime's own
    errors (invalid graph, out of memory) propagate for the caller to word.
    """
    import onnxruntime as ort

    target = as_target(target)
    if arena not in ARENAS:
        raise ValueError(f"arena must be one of {ARENAS}, not {arena!r}")
    provider = PROVIDERS[target.provider]

    def options():
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads) if threads else cores()
        so.inter_op_num_threads = 1
        so.enable_mem_pattern = mem_pattern
        so.enable_cpu_mem_arena = arena != "none"
        if arena == "shared" and _shared_cpu_arena():
            so.add_session_config_entry("session.use_env_allocators", "1")
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.use_deterministic_compute = deterministic
        so.log_severity_level = 3
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.fspath(profile)
        return so

    providers: list[Any] = [(provider.ep, provider.options(target, None if stream is None else stream.handle))]
    if provider.ep != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # for the ops the provider does not implement
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    model = model if isinstance(model, bytes) else os.fspath(model)
    sess, why = None, None
    if branches_first and provider.ep == "CPUExecutionProvider":
        try:
            sess = _branches_first_session(model, options, providers)
        except Exception as exc:  # ORT's own error types, OSError (no writable temporary folder), ...
            # The order is an optimisation: the graph runs in ONNX Runtime's own order instead. A
            # graph that cannot run at all raises below, from the plain session, as it always did.
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if sess is None:
        sess = ort.InferenceSession(model, options(), providers=providers)
        if why is not None:
            warnings.warn(f"{what}: could not run ONNX Runtime's optimised graph in the branches-first "
                          f"order ({why}); it runs in ONNX Runtime's own order (slower with many taps)",
                          RuntimeWarning, stacklevel=2)
    if provider.ep not in sess.get_providers():
        raise DeviceUnavailable(f"ONNX Runtime did not keep the {provider.ep} for {what}; run "
                                "`cnnviz-fast info` to see why")
    sess.cnnviz_stream = stream  # a session must not outlive the stream it computes on
    return sess


def _branches_first_session(model, options, providers):
    """Optimise `model` in a first session and write ONNX Runtime's optimised graph (weights in a
    file beside it) to a temporary folder; reorder its nodes (graph._schedule); open that graph with
    no further optimisation, executed in file order. See graph/_schedule.py for why."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from .graph._schedule import has_subgraphs, reorder_graph

    with tempfile.TemporaryDirectory(prefix="cnnviz-ort-") as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        first = options()
        first.enable_profiling = False
        first.optimized_model_filepath = optimized
        first.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        first.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(model, first, providers=providers)
        proto = onnx.load(optimized, load_external_data=False)
        if has_subgraphs(proto.graph):  # implicit reads of outer tensors: keep ONNX Runtime's order
            return ort.InferenceSession(model, options(), providers=providers)
        ordered = os.path.join(tmp, "ordered.onnx")
        onnx.save(reorder_graph(proto), ordered)
        second = options()
        second.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        second.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        return ort.InferenceSession(ordered, second, providers=providers)


_ARENA: list[bool] = []


def _shared_cpu_arena() -> bool:
    """Register (once) the process-wide CPU arena; False when ONNX Runtime would not have it."""
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


__all__ = ["DEVICES", "PROVIDERS", "PLACEMENTS", "ARENAS", "CPU", "Provider", "Target", "Stream", "cores",
           "build_info", "gpu_count", "ort_cuda_status", "native_cuda_blocker", "cuda_blocker", "resolve_device",
           "as_target", "cuda_stream", "pinned_empty", "session"]
