"""Where a projection runs: ONNX Runtime sessions, IOBinding, the native kernels, one CUDA stream.

Every tensor between steps is an `onnxruntime.OrtValue` on the device (NumPy-backed on the CPU).
ORT sessions run through IOBinding with outputs bound on the device; the native `switch_pool` and
`unpool` take them through DLPack and hand their results back the same way, so nothing crosses to
the host between steps. On CUDA, ORT gets the projector's own stream as `user_compute_stream` and
the native kernels are launched on that same stream, so their order is the program's order (ORT
also synchronises its stream at the end of each run); see runtime.session for that policy. cuDNN
is asked for deterministic algorithms and no TF32, so the same seeds give the same bits.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from .. import runtime
# The one rule for devices lives in runtime; projector.py and the tests import these names from here.


class Device:
    """Sessions and kernels on a runtime Target; `threads` sets ORT's intra-op pool (CPU)."""

    def __init__(self, target: runtime.Target | str, threads: int | None = None):
        self.target = runtime.as_target(target)
        self.name = self.target.name
        self.threads = threads or runtime.cores()
        self.stream = runtime.cuda_stream(self.target)

    @property
    def stream_handle(self) -> int | None:
        return None if self.stream is None else self.stream.handle

    def session(self, proto: onnx.ModelProto, once_per_batch: bool = False):
        """An ORT session for `proto`. On the CPU, sessions run once per image batch (forward,
        preparing switches) allocate without an arena, whose peak would stay reserved per session;
        the reverse-pass sessions, run for every seed batch, share one process-wide arena.
        Spinning stays on (ONNX Runtime's default, under which benchmarks/projection.py was measured)."""
        return runtime.session(proto, self.target, threads=self.threads, arena="none" if once_per_batch else "shared",
                               spinning=True, deterministic=True, stream=self.stream, what="a projection graph")

    def run(self, sess, feeds: dict[str, Any], outputs: list[str]) -> list:
        """Run `sess` with `feeds` (NumPy arrays on the host, OrtValues where they are) -> OrtValues."""
        binding = sess.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, self.name, self.target.device_id)
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
