"""switch_pool and unpool against the NumPy reference, against PyTorch, and against each other.

Tolerances: none. Pooled values are copies of input elements, so they compare exactly. unpool sums
in float32, but in a fixed order (ky, then kx ascending) that the reference's scatter reproduces,
so its sums compare exactly too; the comparisons with autograd use integer gradients, whose sums are
exact in any order.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnviz_fast import _C
from cnnviz_fast import _reference as ref

GEOMETRIES = [
    pytest.param((2, 3, 9, 11), dict(kernel=3, stride=2), id="k3s2-odd"),
    pytest.param((2, 3, 10, 12), dict(kernel=3, stride=2, ceil_mode=True), id="k3s2-ceil"),
    pytest.param((1, 4, 7, 5), dict(kernel=3, stride=1, padding=1), id="k3s1-pad1-overlap"),
    pytest.param((3, 2, 8, 9), dict(kernel=2), id="k2-default-stride"),
    pytest.param((2, 2, 11, 9), dict(kernel=3, stride=1, padding=2, dilation=2), id="dilation2"),
    pytest.param((2, 3, 9, 8), dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0, 0, 1)), id="asymmetric"),
    pytest.param(
        (1, 3, 10, 7),
        dict(kernel=(2, 3), stride=(3, 2), padding=(0, 1, 1, 0), dilation=(2, 1), ceil_mode=True),
        id="asymmetric-dilated-ceil",
    ),
    pytest.param((1, 2, 4, 5), dict(kernel=2, stride=1, padding=(3, 0, 0, 3)), id="pads-beyond-kernel"),
    pytest.param((2, 2, 1, 5), dict(kernel=(2, 1), stride=1, padding=(2, 0, 2, 0), dilation=(3, 1)), id="all-padding"),
    pytest.param((2, 3, 5, 4), dict(kernel=1), id="k1"),
    pytest.param((1, 2, 16, 15), dict(kernel=15, stride=1), id="k15-225-positions"),
    pytest.param((0, 3, 7, 7), dict(kernel=3, stride=2), id="N0"),
    pytest.param((2, 0, 7, 7), dict(kernel=3, stride=2), id="C0"),
]

KINDS = ["normal", "relu", "integers", "special"]


def pooled_shape(shape, geometry):
    return shape[:2] + ref.pool_output_size(*shape[2:], **geometry)


def unpool_args(geometry):
    return {k: v for k, v in geometry.items() if k != "ceil_mode"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, geometry", GEOMETRIES)
def test_switch_pool_matches_reference(device, rng, make, shape, geometry, kind):
    x = make(rng, shape, kind)
    y, s = _C.switch_pool(device.put(x), **geometry)
    y, s = device.get(y), device.get(s)
    want_y, want_s = ref.switch_pool(x, **geometry)
    assert y.dtype == np.float32 and s.dtype == np.uint8
    assert y.shape == s.shape == want_y.shape
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(s, want_s)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, geometry", GEOMETRIES)
def test_unpool_matches_reference(device, rng, make, shape, geometry, kind):
    _, switches = ref.switch_pool(make(rng, shape, kind), **geometry)
    y = make(rng, switches.shape, kind)
    x = _C.unpool(device.put(y), device.put(switches), output_size=shape[2:], **unpool_args(geometry))
    x = device.get(x)
    assert x.dtype == np.float32 and x.shape == shape
    np.testing.assert_array_equal(x, ref.unpool(y, switches, output_size=shape[2:], **unpool_args(geometry)))


@pytest.mark.parametrize("shape, geometry", GEOMETRIES[:9])
def test_unpool_ignores_switches_that_name_no_input(device, rng, shape, geometry):
    """Any uint8 is accepted; 255, values >= kh*kw and switches into padding add nothing."""
    out = pooled_shape(shape, geometry)
    switches = rng.integers(0, 256, out).astype(np.uint8)
    y = rng.standard_normal(out).astype(np.float32)
    x = device.get(_C.unpool(device.put(y), device.put(switches), output_size=shape[2:], **unpool_args(geometry)))
    np.testing.assert_array_equal(x, ref.unpool(y, switches, output_size=shape[2:], **unpool_args(geometry)))


def random_geometry(rng):
    """Any geometry the API allows: ONNX-style pads up to a window and more, dilation, ceil mode."""
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    return dict(
        kernel=(kh, kw),
        stride=tuple(int(v) for v in rng.integers(1, 4, 2)),
        padding=tuple(int(v) for v in rng.integers(0, 4, 4)),
        dilation=tuple(int(v) for v in rng.integers(1, 4, 2)),
        ceil_mode=bool(rng.integers(2)),
    )


def test_random_geometries_match_reference(device, rng, make):
    """Output sizes, values, switches and unpool sums over 80 random geometries and data kinds;
    a geometry whose window does not fit the padded input is refused by both."""
    refused = 0
    for _ in range(80):
        geometry = random_geometry(rng)
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *(int(v) for v in rng.integers(1, 10, 2)))
        x = make(rng, shape, KINDS[rng.integers(len(KINDS))])
        try:
            want_y, want_s = ref.switch_pool(x, **geometry)
        except ValueError:
            refused += 1
            with pytest.raises(ValueError, match="'x'"):
                _C.switch_pool(device.put(x), **geometry)
            continue
        y, s = _C.switch_pool(device.put(x), **geometry)
        np.testing.assert_array_equal(device.get(y), want_y, err_msg=str(geometry))
        np.testing.assert_array_equal(device.get(s), want_s, err_msg=str(geometry))
        grad = make(rng, want_y.shape, "normal")
        back = _C.unpool(device.put(grad), s, output_size=shape[2:], **unpool_args(geometry))
        want = ref.unpool(grad, want_s, output_size=shape[2:], **unpool_args(geometry))
        np.testing.assert_array_equal(device.get(back), want, err_msg=str(geometry))
    assert 0 < refused < 40


def strided_views(a):
    """Views of a 4-D array that are not C-contiguous: transposed, sliced, negative strides."""
    return {
        "transposed": a.transpose(0, 1, 3, 2),
        "channels-swapped": a.transpose(1, 0, 2, 3),
        "sliced": a[:, ::2, 1::2, ::3],
        "reversed": a[..., ::-1],
    }


def test_switch_pool_and_unpool_accept_non_contiguous_arrays(rng, make):
    base = make(rng, (3, 4, 13, 12), "relu")
    geometry = dict(kernel=3, stride=2, padding=1)
    for name, x in strided_views(base).items():
        assert not x.flags.c_contiguous
        y, s = _C.switch_pool(x, **geometry)
        want_y, want_s = ref.switch_pool(x, **geometry)
        np.testing.assert_array_equal(y, want_y, err_msg=name)
        np.testing.assert_array_equal(s, want_s, err_msg=name)
        y_view = np.ascontiguousarray(y.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        s_view = np.ascontiguousarray(s.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        assert not y_view.flags.c_contiguous and not s_view.flags.c_contiguous
        back = _C.unpool(y_view, s_view, output_size=x.shape[2:], **geometry)
        np.testing.assert_array_equal(back, ref.unpool(y, s, output_size=x.shape[2:], **geometry), err_msg=name)


TORCH_GEOMETRIES = [
    pytest.param((4, 16, 55, 55), dict(kernel=3, stride=2), id="alexnet-pool1"),
    pytest.param((2, 16, 26, 26), dict(kernel=3, stride=2, padding=1), id="zfnet-pool2-pad"),
    pytest.param((2, 16, 26, 26), dict(kernel=3, stride=2, ceil_mode=True), id="zfnet-pool2-ceil"),
    pytest.param((3, 8, 31, 29), dict(kernel=3, stride=1, padding=1), id="k3s1-overlap"),
    pytest.param((2, 8, 23, 21), dict(kernel=(3, 2), stride=(2, 3), padding=(1, 1), dilation=2), id="dilation2"),
    pytest.param((2, 8, 9, 10), dict(kernel=2, stride=1, padding=1, dilation=4, ceil_mode=True), id="dilation4-ceil"),
]


def torch_geometry(geometry):
    g = dict(geometry)
    g["kernel_size"] = g.pop("kernel")
    return g


@pytest.mark.parametrize("shape, geometry", TORCH_GEOMETRIES)
def test_switch_pool_and_unpool_match_torch_on_tie_free_input(device, rng, make, shape, geometry):
    """Values equal max_pool2d; switches name its return_indices; unpool equals autograd's backward."""
    x = make(rng, shape, "distinct")
    y, s = _C.switch_pool(device.put(x), **geometry)
    y, s = device.get(y), device.get(s)
    xt = torch.from_numpy(x).requires_grad_()
    yt, indices = F.max_pool2d(xt, return_indices=True, **torch_geometry(geometry))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    # A window wholly in padding has switch 255 where PyTorch reports an arbitrary index and
    # backpropagates into it, so such windows are left out of the index and gradient checks.
    chosen = s != ref.NO_SWITCH
    flat = ref.switch_input_index(s, input_size=shape[2:], **unpool_args(geometry))
    np.testing.assert_array_equal(flat[chosen], indices.numpy()[chosen])
    grad = (rng.integers(-8, 9, y.shape) * chosen).astype(np.float32)
    yt.backward(torch.from_numpy(grad))
    x_back = _C.unpool(device.put(grad), device.put(s), output_size=shape[2:], **unpool_args(geometry))
    np.testing.assert_array_equal(device.get(x_back), xt.grad.numpy())


@pytest.mark.parametrize("shape, kernel", [((2, 3, 12, 12), 2), ((2, 3, 13, 11), 3), ((1, 2, 9, 10), (2, 3))])
def test_unpool_of_non_overlapping_windows_restores_each_window_max(device, rng, make, shape, kernel):
    """With stride == kernel, unpool(switch_pool(x)) is x at each window's max and 0 elsewhere."""
    x = make(rng, shape, "distinct")
    y, s = _C.switch_pool(device.put(x), kernel)
    x_back = device.get(_C.unpool(y, s, kernel, output_size=shape[2:]))
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    y = device.get(y)
    OH, OW = y.shape[2:]
    window_max = np.repeat(np.repeat(y, kh, axis=2), kw, axis=3)
    want = np.zeros_like(x)
    covered = x[:, :, : OH * kh, : OW * kw]
    want[:, :, : OH * kh, : OW * kw] = np.where(covered == window_max, covered, 0)
    np.testing.assert_array_equal(x_back, want)


@pytest.mark.parametrize("shape, geometry", [g for g in GEOMETRIES if g.id in ("k3s1-pad1-overlap", "dilation2", "asymmetric")])
def test_unpool_of_overlapping_windows_counts_each_max(device, rng, make, shape, geometry):
    """Each window's max lands on its source, so unpool(y) = x * (how many windows chose it)."""
    x = make(rng, shape, "distinct")
    y, s = _C.switch_pool(device.put(x), **geometry)
    counts = device.get(_C.unpool(device.put(np.ones(y.shape, np.float32)), s, output_size=shape[2:], **unpool_args(geometry)))
    assert counts.sum() == (device.get(s) != ref.NO_SWITCH).sum()
    assert counts.max() > 1
    x_back = device.get(_C.unpool(y, s, output_size=shape[2:], **unpool_args(geometry)))
    np.testing.assert_array_equal(x_back, x * counts)


@pytest.mark.parametrize("shape, geometry", GEOMETRIES[:9])
def test_unpool_is_the_adjoint_of_pooling_with_fixed_switches(device, rng, make, shape, geometry):
    """<P_s(x'), y> == <x', unpool(y, s)>, where P_s(x') reads x' at each window's switch."""
    _, s = _C.switch_pool(device.put(make(rng, shape, "relu")), **geometry)
    s = device.get(s)
    flat = ref.switch_input_index(s, input_size=shape[2:], **unpool_args(geometry))
    # Integer values keep both inner products exact in float64.
    x2 = rng.integers(-5, 6, shape).astype(np.float32)
    y = rng.integers(-5, 6, s.shape).astype(np.float32)
    planes = x2.reshape(shape[0], shape[1], -1)
    read = np.take_along_axis(planes, np.maximum(flat, 0).reshape(*s.shape[:2], -1), axis=2).reshape(s.shape)
    pooled = np.where(flat >= 0, read, 0)
    x_back = device.get(_C.unpool(device.put(y), device.put(s), output_size=shape[2:], **unpool_args(geometry)))
    assert np.dot(pooled.ravel().astype(np.float64), y.ravel()) == np.dot(x2.ravel().astype(np.float64), x_back.ravel())


def test_unpool_is_deterministic(device, rng, make):
    """Overlapping windows add in a fixed order: the same bits on every run."""
    geometry = dict(kernel=3, stride=1, padding=1)
    x = make(rng, (4, 32, 27, 27), "normal")
    _, s = _C.switch_pool(device.put(x), **geometry)
    y = device.put(make(rng, (4, 32, 27, 27), "normal"))
    first = device.get(_C.unpool(y, s, output_size=(27, 27), **geometry))
    for _ in range(3):
        again = device.get(_C.unpool(y, s, output_size=(27, 27), **geometry))
        assert again.tobytes() == first.tobytes()
