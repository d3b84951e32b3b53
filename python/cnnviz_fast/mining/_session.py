"""The forward pass of the mining graph in ONNX Runtime: only per-(image, unit) maxima and their
positions leave it.

CPU: "graph" heads return [N, C] maxima and positions from in-graph ReduceMax + ArgMax; "native"
heads have ORT write the tapped maps into output buffers of ours (IOBinding), allocated once and
reused, and reduce them with `_C.unit_max` (one OpenMP pass per map). "auto" means native on the
CPU, graph on CUDA. Why (benchmarks/mining.py, ResNet-50's 17 default taps, batch 32, 2 threads,
Intel Xeon): ORT's ArgMax on [N, C, H*W] is a slow kernel (it alone cost a third of the forward),
ReduceMax adds a pass more, and fresh outputs per run page-fault hundreds of MB per batch.

Three more things make the CPU forward with taps cost little more than the plain graph's (each
measured there, the forward of a batch of 32, plain graph 0.85 s):
- the session runs ORT's optimised graph in `graph._schedule` order (runtime.session(...,
  branches_first=True)): each tapped map's reorder out of ORT's blocked layout right after the map
  is computed, not all at the end (1.03 -> 0.93 s);
- a batch runs as chunks of at most RUN_BYTES of tapped maps (ResNet-50: 4 runs of 8 images,
  202 MB of buffers instead of 808 MB), each reduced as soon as it is written. The buffers are
  touched for the first time by the first run, and first touches are what a fresh session pays:
  on this virtual machine about 1.6 ms per MB in transparent huge pages, several times less in
  4 KiB pages, which is why the buffers ask for the small ones (`_small_pages`);
- no memory pattern: with it, the second run re-plans and touches a new block again.
The remaining cost is the reorders themselves (NCHWc to NCHW, writing every tapped map once):
that is the price of exact first-maximum positions.

CUDA: IOBinding on the session's own stream (runtime.session's stream policy). The input is bound
from page-locked host memory (the decode workers write straight into it), outputs are bound on the
device, and the caller merges them into device-resident top-k stores through DLPack; only the
[N, C] maxima come back to the host, for the per-unit statistics. cuDNN's algorithm choice is
HEURISTIC (see runtime): a resumed run must equal an uninterrupted one.
"""
from __future__ import annotations

import mmap
from typing import Any, Sequence

import numpy as np

from .. import runtime
from ..data import Preprocess
from ..errors import CnnvizError, DeviceUnavailable
from ._optimize import UINT8_INPUT, rewrite_lrn, uint8_input_graph
from .errors import MiningError

HEADS = ("auto", "graph", "native")
# Above this many bytes of tapped maps for ONE image (all layers), "auto" on the CPU keeps in-graph
# heads rather than holding them in buffers of ours.
NATIVE_BUFFER_BYTES = 4 << 30
# CPU native heads: a batch is run through ORT in chunks of at most this many bytes of tapped maps
# (at least one image a run).
RUN_BYTES = 256 << 20


class ForwardSession:
    """The mining graph of `layers` on `device`; `run(images)` -> [(values, positions)] per layer.

    On CPU the pairs are NumPy arrays (float32 [n, C], int32 [n, C]); on CUDA they are device
    tensors (DLPack), and `host(values)` copies one to NumPy. `allocate(shape)` makes the batch
    buffers the decode workers fill (page-locked on CUDA). `iobinding=True` on the CPU runs the
    CUDA code path with host-bound outputs (it is what the tests exercise without a GPU).
    `optimize` applies `_optimize.rewrite_lrn` on the CPU (cuDNN's LRN is fast as it is).
    `uint8_input=pre` makes the session take uint8 [N, H, W, 3] batches and normalise them in the
    graph with `pre.affine()` (BatchLoader layout "uint8"). `batch_size` sizes the CPU native
    heads' buffers (a larger batch later grows them).
    """

    def __init__(self, model, layers: Sequence, device: runtime.Target | str = "cpu", heads: str = "auto",
                 threads: int | None = None, spinning: bool = False, iobinding: bool | None = None,
                 optimize: bool = True, uint8_input: Preprocess | None = None, batch_size: int = 32):
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, not {heads!r}")
        self.target = runtime.as_target(device)
        self.device = device = self.target.name
        self.layers = list(layers)
        self.heads = _auto_heads(self.layers, device) if heads == "auto" else heads
        self.input_name = model.input_name
        self.iobinding = device == "cuda" if iobinding is None else iobinding
        try:
            proto = model.mining_graph(self.layers, heads=self.heads)
        except (ValueError, KeyError) as exc:
            raise MiningError(f"cannot build the mining graph of {model.name}: {exc}") from None
        self.rewritten_lrns = 0
        if device == "cpu" and optimize:
            proto, self.rewritten_lrns = rewrite_lrn(proto)
        if uint8_input is not None:
            proto = uint8_input_graph(proto, self.input_name, uint8_input)
            self.input_name = UINT8_INPUT
        if self.heads == "graph":
            self.outputs = [name for layer in self.layers for name in (layer.max_output, layer.argmax_output)]
        else:
            self.outputs = list(dict.fromkeys(layer.tensor for layer in self.layers))
        self.stream = runtime.cuda_stream(self.target)
        native_cpu = self.heads == "native" and not self.iobinding
        # Decode threads share the cores with ORT's pool: spinning workers would steal their time.
        try:
            self.session = runtime.session(proto, self.target, threads=threads, arena="session", spinning=spinning,
                                           mem_pattern=not native_cpu, stream=self.stream,
                                           branches_first=device == "cpu",
                                           what=f"the mining graph of {model.name}")
        except CnnvizError:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise MiningError(f"ONNX Runtime cannot run the mining graph of {model.name}: {exc}") from None
        self._binding = self.session.io_binding() if self.iobinding else None
        self.pinned_note: str | None = None
        # CPU native heads: ORT writes the maps of one chunk into these ({output: array}), reused.
        self._maps: dict[str, np.ndarray] = {}
        self._maps_binding = self.session.io_binding() if native_cpu else None
        self._map_shapes = _map_shapes(proto, self.outputs) if native_cpu else None
        self._run_size = 1
        if self._map_shapes is not None:
            self._sized(batch_size)

    def allocate(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """A batch buffer; page-locked for a CUDA session (pageable, with `pinned_note` saying why,
        where the system refuses page-locked memory: slower copies, same results)."""
        try:
            return runtime.pinned_empty(shape, dtype, self.target)
        except DeviceUnavailable as exc:
            self.pinned_note = f"{exc}: input copies use pageable memory"
            return np.empty(shape, dtype)

    def run(self, images: np.ndarray) -> list[tuple[Any, Any]]:
        try:
            if self._binding is not None:
                outs = self._run_bound(images)
            elif self._maps_binding is not None:
                return self._run_into_buffers(images)
            else:
                outs = self.session.run(self.outputs, {self.input_name: images})
        except Exception as exc:  # ORT's own error types (Fail, RuntimeException, ...), e.g. out of memory
            raise _failed(images, exc) from None
        if self.heads == "graph":
            return [(outs[2 * i], outs[2 * i + 1]) for i in range(len(self.layers))]
        by_tensor = dict(zip(self.outputs, outs))
        return [self._reduce(by_tensor[layer.tensor]) for layer in self.layers]

    def host(self, values) -> np.ndarray:
        """A NumPy copy (or the array itself on the host) of a `run` output."""
        if isinstance(values, np.ndarray):
            return values
        if hasattr(values, "numpy"):
            return values.numpy()
        return np.from_dlpack(values)

    def close(self) -> None:
        """Drop the IOBinding and the session (and with it the stream); batch buffers free themselves."""
        self._binding = self._maps_binding = None
        self._maps = {}
        self.session = None

    def _run_bound(self, images: np.ndarray) -> list:
        import onnxruntime as ort

        b = self._binding
        images = np.ascontiguousarray(images)
        b.bind_input(self.input_name, "cpu", 0, images.dtype.type, list(images.shape), images.ctypes.data)
        out_device = "cuda" if self.device == "cuda" else "cpu"
        for name in self.outputs:
            b.bind_output(name, out_device, self.target.device_id)
        self.session.run_with_iobinding(b)
        outs: list[ort.OrtValue] = b.get_outputs()
        b.clear_binding_outputs()
        return outs  # OrtValues, handed on through DLPack (on the host too, where tests run this path)

    def _run_into_buffers(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """CPU native heads: the batch in equal chunks of at most `_run_size` images, each chunk's
        maps written by ORT into the buffers and reduced before the next chunk overwrites them."""
        images = np.ascontiguousarray(images)
        n = len(images)
        if self._map_shapes is None and n:  # shapes not inferred: ask ORT, with one image
            outs = self.session.run(self.outputs, {self.input_name: images[:1]})
            self._map_shapes = {name: tuple(a.shape[1:]) for name, a in zip(self.outputs, outs)}
            self._sized(n)
        chunks = -(-n // self._run_size) if n else 0
        size = -(-n // chunks) if n else 0
        self._grow(size)
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = []
        b = self._maps_binding
        for start in range(0, n, size or 1):
            part = images[start:start + size]
            m = len(part)
            b.bind_input(self.input_name, "cpu", 0, part.dtype.type, list(part.shape), part.ctypes.data)
            views = {name: a[:m] for name, a in self._maps.items()}
            for name, a in views.items():
                b.bind_output(name, "cpu", 0, a.dtype.type, list(a.shape), a.ctypes.data)
            try:
                self.session.run_with_iobinding(b)
            except Exception as exc:  # ORT's own error types
                raise _failed(images, exc) from None
            parts.append([self._reduce(views[layer.tensor]) for layer in self.layers])
        if len(parts) == 1:
            return parts[0]
        return [(np.concatenate([p[i][0] for p in parts]), np.concatenate([p[i][1] for p in parts]))
                for i in range(len(self.layers))]

    def _sized(self, batch_size: int) -> None:
        per_image = sum(4 * int(np.prod(shape)) for shape in self._map_shapes.values())
        self._run_size = max(1, RUN_BYTES // max(1, per_image))
        self._grow(min(batch_size, self._run_size))

    def _grow(self, rows: int) -> None:
        """Make the map buffers hold at least `rows` images."""
        if self._maps and len(next(iter(self._maps.values()))) >= rows:
            return
        self._maps = {name: _small_pages((rows, *shape)) for name, shape in self._map_shapes.items()}

    def _reduce(self, tap) -> tuple[Any, Any]:
        from .. import _C

        shape = tuple(tap.shape() if callable(getattr(tap, "shape", None)) else tap.shape)
        if len(shape) == 2:  # an fc layer: each unit's map is one number, its own maximum at position 0
            # a copy: on the CPU `tap` is one of the buffers the next batch is written into
            return np.array(tap), np.zeros(shape, np.int32)
        return _C.unit_max(tap)


def _auto_heads(layers: Sequence, device: str) -> str:
    """"auto": native heads on the CPU unless one image's float32 maps pass NATIVE_BUFFER_BYTES,
    graph heads on CUDA (the maps never leave the device there)."""
    if device != "cpu":
        return "graph"
    per_image = 0
    for layer in dict((layer.tensor, layer) for layer in layers).values():
        shape = getattr(layer, "map_shape", None) or ()
        per_image += 4 * layer.units * int(np.prod(shape))
    return "native" if per_image <= NATIVE_BUFFER_BYTES else "graph"


def _map_shapes(proto, outputs: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """The per-image shape of each tapped output from the mining graph's inferred output shapes;
    None when one is not known beyond the batch axis (the first run then asks ORT)."""
    infos = {o.name: o for o in proto.graph.output}
    shapes = {}
    for name in outputs:
        t = infos[name].type.tensor_type
        dims = t.shape.dim[1:] if t.HasField("shape") else None
        if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return None
        shapes[name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _small_pages(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array in 4 KiB pages (NumPy asks Linux for transparent huge pages
    on large arrays). A map buffer is written whole by every run; what costs is its first touch,
    which on the virtual machines measured here (see the module docstring) is several times
    cheaper in small pages. Elsewhere (no madvise) plain NumPy memory."""
    nbytes = 4 * int(np.prod(shape))
    if nbytes == 0 or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(shape, np.float32)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, np.float32).reshape(shape)  # the array keeps the mapping alive


def _failed(images, exc: Exception) -> MiningError:
    return MiningError(f"ONNX Runtime failed on a batch of {len(images)} images: {exc}; results up to "
                       "the last checkpoint are kept, run the same command to resume")
