"""Fixtures shared by the kernel tests: the device matrix, seeded data and the CUDA skip rule.

A test marked `cuda` (the "cuda" case of the `device` fixture is) runs only when the extension was
built with CUDA, sees a GPU, and torch or CuPy can put test arrays there; otherwise it is skipped
with the reason.

Helpers shared by several test modules live in tests/_support (test-only builders) and in the
package's cnnviz_fast.testing (the torch oracle); tests/ has no __init__.py, so pytest puts it on
sys.path and `from _support... import` works from any working directory.
"""

import functools
import zlib

import numpy as np
import pytest


@functools.lru_cache(maxsize=None)
def gpu_array_library():
    """'torch' or 'cupy', whichever can place arrays on a GPU here, else None."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    # CuPy raises its own runtime errors (no driver, no libcudart) at import or first call.
    except Exception:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cuda_skip_reason():
    """Why the CUDA tests cannot run here, or None when they can."""
    try:
        from cnnviz_fast import _C
    except ImportError as exc:
        return f"cnnviz_fast._C does not import: {exc}"
    if not _C.build_info()["cuda"]:
        return "cnnviz_fast._C was built without CUDA"
    if _C.cuda_device_count() == 0:
        return "no CUDA device is visible"
    if gpu_array_library() is None:
        return "neither torch with CUDA nor CuPy is installed to put test arrays on the GPU"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None:
        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(reason)


class Device:
    """Where a test's arrays live: NumPy on "cpu", torch or CuPy GPU arrays on "cuda"."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Device({self.name!r})"

    def put(self, a):
        """The NumPy array `a` on this device (the same object on the CPU)."""
        if self.name == "cpu":
            return a
        a = np.ascontiguousarray(a)
        if gpu_array_library() == "torch":
            import torch

            return torch.from_numpy(a).cuda()
        import cupy

        return cupy.asarray(a)

    def get(self, out):
        """A NumPy copy of an op's output, after checking that the output lives on this device."""
        from cnnviz_fast import _C

        if self.name == "cpu":
            assert isinstance(out, np.ndarray), f"a CPU op returned {type(out)}"
            return out
        assert isinstance(out, _C.DeviceArray), f"a CUDA op returned {type(out)}"
        return out.numpy()

    def read(self, a):
        """A NumPy copy of an array made by `put` (e.g. a top-k state updated in place)."""
        if self.name == "cpu":
            return a.copy()
        if gpu_array_library() == "torch":
            return a.cpu().numpy()
        return a.get()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    return Device(request.param)


@pytest.fixture
def rng(request):
    # Seeded from the test id: a rerun sees the same data, and each case sees different data.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def make_map(rng, shape, kind):
    """Random float32 data of one kind:

    - "normal": continuous values (ties practically never occur);
    - "distinct": a permutation of small integers, tie-free by construction, exact in float32;
    - "relu": ReLU output, mostly zeros, so whole windows and maps tie at 0;
    - "integers": a few integer levels, exact ties everywhere;
    - "special": NaN, -inf and +inf mixed into continuous values.
    """
    n = int(np.prod(shape))
    if kind == "normal":
        a = rng.standard_normal(n)
    elif kind == "distinct":
        a = rng.permutation(n) - n // 2
    elif kind == "relu":
        a = np.maximum(rng.standard_normal(n) - 0.5, 0.0)
    elif kind == "integers":
        a = rng.integers(-2, 3, n)
    elif kind == "special":
        a = rng.standard_normal(n)
        pick = rng.random(n)
        a[pick < 0.1] = np.nan
        a[(pick >= 0.1) & (pick < 0.2)] = -np.inf
        a[(pick >= 0.2) & (pick < 0.25)] = np.inf
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return a.astype(np.float32).reshape(shape)


@pytest.fixture
def make():
    """`make(rng, shape, kind)`: see make_map."""
    return make_map
