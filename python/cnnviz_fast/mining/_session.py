"""The forward pass of the mining graph in ONNX Runtime: only per-(image, unit) maxima and their
positions leave it.

CPU: "graph" heads return [N, C] maxima and positions from in-graph ReduceMax + ArgMax; "native"
heads return the tapped maps, written by ORT into output buffers of ours that are allocated once
per batch size and reused (IOBinding), and reduced by `_C.unit_max` (one OpenMP pass per map).
"auto" means native on the CPU, graph on CUDA. Why (benchmarks/mining.py, ResNet-50 at batch 32,
2 threads, Intel Xeon): ORT's ArgMax on [N, C, H*W] is a slow kernel (it alone costs a third of
the forward on ResNet-50's 17 default taps), ReduceMax adds a pass more, and fresh outputs per run
page-fault hundreds of MB per batch. The graph's output reorders (NCHWc to NCHW, writing every
tapped map once) stay: that is the price of exact first-maximum positions (a GlobalMaxPool inside
the blocked layout would give the maxima alone for about 60% of it). When the buffers of one batch
would pass NATIVE_BUFFER_BYTES, "auto" keeps graph heads (the maps then live only in ORT's arena).

CUDA: IOBinding on the session's own stream (runtime.session's stream policy). The input is bound
from page-locked host memory (the decode workers write straight into it), outputs are bound on the
device, and the caller merges them into device-resident top-k stores through DLPack; only the
[N, C] maxima come back to the host, for the per-unit statistics. cuDNN's algorithm choice is
HEURISTIC (see runtime): a resumed run must equal an uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import runtime
from ..data import Preprocess
from ..errors import CnnvizError, DeviceUnavailable
from ._optimize import UINT8_INPUT, rewrite_lrn, uint8_input_graph
from .errors import MiningError

HEADS = ("auto", "graph", "native")
# Above this many bytes of tapped maps per batch (all layers), "auto" on the CPU keeps in-graph
# heads rather than holding every map in buffers of ours at once.
NATIVE_BUFFER_BYTES = 4 << 30


class ForwardSession:
    """The mining graph of `layers` on `device`; `run(images)` -> [(values, positions)] per layer.

    On CPU the pairs are NumPy arrays (float32 [n, C], int32 [n, C]); on CUDA they are device
    tensors (DLPack), and `host(values)` copies one to NumPy. `allocate(shape)` makes the batch
    buffers the decode workers fill (page-locked on CUDA). `iobinding=True` on the CPU runs the
    CUDA code path with host-bound outputs (it is what the tests exercise without a GPU).
    `optimize` applies `_optimize.rewrite_lrn` on the CPU (cuDNN's LRN is fast as it is).
    `uint8_input=pre` makes the session take uint8 [N, H, W, 3] batches and normalise them in the
    graph with `pre.affine()` (BatchLoader layout "uint8"). `batch_size` only informs "auto".
    """

    def __init__(self, model, layers: Sequence, device: runtime.Target | str = "cpu", heads: str = "auto",
                 threads: int | None = None, spinning: bool = False, iobinding: bool | None = None,
                 optimize: bool = True, uint8_input: Preprocess | None = None, batch_size: int = 32):
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, not {heads!r}")
        self.target = runtime.as_target(device)
        self.device = device = self.target.name
        self.layers = list(layers)
        self.heads = _auto_heads(self.layers, device, batch_size) if heads == "auto" else heads
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
        # Decode threads share the cores with ORT's pool: spinning workers would steal their time.
        try:
            self.session = runtime.session(proto, self.target, threads=threads, arena="session", spinning=spinning,
                                           mem_pattern=True, stream=self.stream,
                                           what=f"the mining graph of {model.name}")
        except CnnvizError:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise MiningError(f"ONNX Runtime cannot run the mining graph of {model.name}: {exc}") from None
        self._binding = self.session.io_binding() if self.iobinding else None
        self.pinned_note: str | None = None
        # CPU native heads: ORT writes the maps into these (batch size -> {output: array}), reused.
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._maps_binding = self.session.io_binding() if self.heads == "native" and not self.iobinding else None

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
                outs = self._run_into_buffers(images)
            else:
                outs = self.session.run(self.outputs, {self.input_name: images})
        except Exception as exc:  # ORT's own error types (Fail, RuntimeException, ...), e.g. out of memory
            raise MiningError(f"ONNX Runtime failed on a batch of {len(images)} images: {exc}; results up to "
                              "the last checkpoint are kept, run the same command to resume") from None
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

    def _run_into_buffers(self, images: np.ndarray) -> list[np.ndarray]:
        """CPU native heads: the maps written into this batch size's buffers (made from the first
        run's outputs, whose shapes ORT knows best), valid until the next run."""
        images = np.ascontiguousarray(images)
        n = len(images)
        maps = self._maps.get(n)
        if maps is None:  # the first batch of this size: ORT allocates, the arrays become the buffers
            outs = self.session.run(self.outputs, {self.input_name: images})
            self._maps = {n: {name: np.ascontiguousarray(a) for name, a in zip(self.outputs, outs)}}
            return [self._maps[n][name] for name in self.outputs]
        b = self._maps_binding
        b.bind_input(self.input_name, "cpu", 0, images.dtype.type, list(images.shape), images.ctypes.data)
        for name, a in maps.items():
            b.bind_output(name, "cpu", 0, a.dtype.type, list(a.shape), a.ctypes.data)
        self.session.run_with_iobinding(b)
        return [maps[name] for name in self.outputs]

    def _reduce(self, tap) -> tuple[Any, Any]:
        from .. import _C

        shape = tuple(tap.shape() if callable(getattr(tap, "shape", None)) else tap.shape)
        if len(shape) == 2:  # an fc layer: each unit's map is one number, its own maximum at position 0
            # a copy: on the CPU `tap` is one of the buffers the next batch is written into
            return np.array(tap), np.zeros(shape, np.int32)
        return _C.unit_max(tap)


def _auto_heads(layers: Sequence, device: str, batch_size: int) -> str:
    """"auto": native heads on the CPU unless one batch would hold more than NATIVE_BUFFER_BYTES
    of float32 maps, graph heads on CUDA (the maps never leave the device there)."""
    if device != "cpu":
        return "graph"
    per_image = 0
    for layer in dict((layer.tensor, layer) for layer in layers).values():
        shape = getattr(layer, "map_shape", None) or ()
        per_image += 4 * layer.units * int(np.prod(shape))
    return "native" if batch_size * per_image <= NATIVE_BUFFER_BYTES else "graph"
