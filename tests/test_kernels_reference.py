"""The NumPy references themselves, held to PyTorch and to hand-worked cases; no native code.

The kernel tests trust these functions, so they are pinned here first: PyTorch where its rules are
ours (values, output sizes, indices and gradients on tie-free input), hand-worked arrays where they
are not (first NaN wins, windows wholly in padding, unit_max and top-k rules).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnviz_fast import _reference as ref

NAN, INF = np.nan, np.inf


def random_torch_geometry(rng):
    """A geometry PyTorch accepts (symmetric padding at most half the kernel) and an input size."""
    while True:
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        g = dict(
            kernel=(kh, kw),
            stride=tuple(int(v) for v in rng.integers(1, 4, 2)),
            padding=(int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))),
            dilation=tuple(int(v) for v in rng.integers(1, 3, 2)),
            ceil_mode=bool(rng.integers(2)),
        )
        H, W = (int(v) for v in rng.integers(1, 10, 2))
        span_h = H + 2 * g["padding"][0] - g["dilation"][0] * (kh - 1) - 1
        span_w = W + 2 * g["padding"][1] - g["dilation"][1] * (kw - 1) - 1
        if span_h >= 0 and span_w >= 0:
            return g, H, W


def torch_pool(x, g):
    return F.max_pool2d(
        x, g["kernel"], g["stride"], g["padding"], g["dilation"], ceil_mode=g["ceil_mode"], return_indices=True
    )


def ref_pool_args(g):
    return dict(kernel=g["kernel"], stride=g["stride"], padding=g["padding"], dilation=g["dilation"])


def test_pool_output_size_matches_torch(rng):
    for _ in range(300):
        g, H, W = random_torch_geometry(rng)
        y = torch_pool(torch.zeros(1, 1, H, W), g)[0]
        assert ref.pool_output_size(H, W, ceil_mode=g["ceil_mode"], **ref_pool_args(g)) == tuple(y.shape[2:]), g


def test_pool_output_size_rejects_window_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input"):
        ref.pool_output_size(2, 5, kernel=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ref.pool_output_size(5, 5, kernel=3, dilation=3)
    assert ref.pool_output_size(2, 5, kernel=3, padding=(1, 0, 0, 0)) == (1, 1)


def test_switch_pool_reference_matches_torch_on_tie_free_input(rng):
    """Values equal max_pool2d, switches name its return_indices, unpool equals its backward."""
    # Dilation 2 over a one-row map: the window's two rows (-1 and 1) both lie in padding.
    cases = [(dict(kernel=(2, 2), stride=(1, 1), padding=(1, 1), dilation=(2, 2), ceil_mode=False), 1, 3)]
    cases += [random_torch_geometry(rng) for _ in range(50)]
    whole_padding_windows = 0
    for g, H, W in cases:
        x = (rng.permutation(2 * 3 * H * W) - 40).astype(np.float32).reshape(2, 3, H, W)
        y, s = ref.switch_pool(x, ceil_mode=g["ceil_mode"], **ref_pool_args(g))
        xt = torch.from_numpy(x).requires_grad_()
        yt, it = torch_pool(xt, g)
        np.testing.assert_array_equal(y, yt.detach().numpy())
        # PyTorch reports an arbitrary index for a window wholly in padding (and backpropagates
        # into it); ours is 255, so those windows are left out of the index and gradient checks.
        chosen = s != ref.NO_SWITCH
        whole_padding_windows += int((~chosen).sum())
        flat = ref.switch_input_index(s, input_size=(H, W), **ref_pool_args(g))
        np.testing.assert_array_equal(flat[chosen], it.numpy()[chosen])
        assert (flat[~chosen] == -1).all()
        # Integer gradients keep every sum exact whatever order autograd adds in.
        grad = (rng.integers(-8, 9, y.shape) * chosen).astype(np.float32)
        yt.backward(torch.from_numpy(grad))
        x_back = ref.unpool(grad, s, output_size=(H, W), **ref_pool_args(g))
        np.testing.assert_array_equal(x_back, xt.grad.numpy())
    assert whole_padding_windows > 0


@pytest.mark.parametrize(
    "kernel, stride, pads, dilation, whole_padding",
    [
        ((3, 2), (2, 1), (1, 0, 0, 1), (1, 1), False),
        ((2, 3), (1, 2), (0, 2, 1, 0), (2, 1), False),
        ((2, 2), (1, 1), (3, 0, 0, 3), (1, 1), True),
    ],
)
def test_asymmetric_padding_matches_torch_on_explicitly_padded_input(rng, kernel, stride, pads, dilation, whole_padding):
    """ONNX-style pads equal pooling, without padding, an input padded with -inf."""
    top, left, bottom, right = pads
    x = (rng.permutation(2 * 2 * 7 * 6) + 1).astype(np.float32).reshape(2, 2, 7, 6)
    y, s = ref.switch_pool(x, kernel, stride, pads, dilation)
    xp = F.pad(torch.from_numpy(x), (left, right, top, bottom), value=-INF)
    yt, it = F.max_pool2d(xp, kernel, stride, 0, dilation, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    chosen = s != ref.NO_SWITCH
    Wp = 6 + left + right
    ih, iw = np.divmod(it.numpy(), Wp)
    flat = ref.switch_input_index(s, kernel, stride, pads, dilation, input_size=(7, 6))
    np.testing.assert_array_equal(flat[chosen], ((ih - top) * 6 + (iw - left))[chosen])
    assert (~chosen).any() == whole_padding


def test_switch_pool_reference_rules():
    x = np.array(
        [
            [1, 3, 3, 0],
            [3, 2, -INF, -INF],
            [NAN, 5, -INF, -INF],
            [0, NAN, 9, 9],
        ],
        dtype=np.float32,
    )[None, None]
    y, s = ref.switch_pool(x, kernel=2)
    # Ties take the first in row-major window order; -inf is taken when nothing beats it; the
    # first NaN wins even against a larger number.
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [NAN, 9]])
    np.testing.assert_array_equal(s[0, 0], [[1, 0], [0, 2]])
    y, s = ref.switch_pool(x[:, :, 1:3, 2:4], kernel=2)
    np.testing.assert_array_equal(y[0, 0], [[-INF]])
    np.testing.assert_array_equal(s[0, 0], [[0]])
    # Padding (2 rows above) wider than the 2-row kernel: the first window sees only padding.
    y, s = ref.switch_pool(x[:, :, :, :1], kernel=(2, 1), stride=2, padding=(2, 0, 0, 0))
    np.testing.assert_array_equal(y[0, 0, :, 0], [-INF, 3, NAN])
    np.testing.assert_array_equal(s[0, 0, :, 0], [255, 1, 0])


def test_unpool_reference_sums_overlapping_windows():
    x = np.array([[0, 1, 0, 0, 7]], dtype=np.float32)[None, None]
    y, s = ref.switch_pool(x, kernel=(1, 3), stride=1)
    np.testing.assert_array_equal(y[0, 0, 0], [1, 1, 7])
    back = ref.unpool(np.array([[[[10, 20, 40]]]], np.float32), s, kernel=(1, 3), stride=1, output_size=(1, 5))
    np.testing.assert_array_equal(back[0, 0, 0], [0, 30, 0, 0, 40])
    # 255 and switches that name no input location add nothing.
    odd = np.array([[[[255, 2, 7]]]], np.uint8)
    back = ref.unpool(np.ones((1, 1, 1, 3), np.float32), odd, kernel=(1, 3), stride=1, output_size=(1, 5))
    np.testing.assert_array_equal(back[0, 0, 0], [0, 0, 0, 1, 0])


def test_unit_max_reference_rules():
    a = np.array(
        [
            [[1, 4], [4, 0]],
            [[NAN, 2], [NAN, 2]],
            [[NAN, NAN], [NAN, NAN]],
            [[NAN, -INF], [-INF, NAN]],
            [[INF, NAN], [0, INF]],
        ],
        dtype=np.float32,
    )[None]
    values, positions = ref.unit_max(a)
    np.testing.assert_array_equal(values, [[4, 2, -INF, -INF, INF]])
    np.testing.assert_array_equal(positions, [[1, 1, -1, 1, 0]])
    assert values.dtype == np.float32 and positions.dtype == np.int32
    values, positions = ref.unit_max(np.zeros((2, 3, 0, 4), np.float32))
    np.testing.assert_array_equal(values, np.full((2, 3), -INF))
    np.testing.assert_array_equal(positions, np.full((2, 3), -1))


def test_unit_max_reference_matches_torch_on_tie_free_input(rng):
    a = (rng.permutation(3 * 5 * 7 * 9) - 100).astype(np.float32).reshape(3, 5, 7, 9)
    values, positions = ref.unit_max(a)
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(values, t.amax(dim=(2, 3)).numpy())
    np.testing.assert_array_equal(positions, t.flatten(2).argmax(dim=2).numpy())


def empty_state(U, k):
    return np.full((U, k), -INF, np.float32), np.full((U, k), -1, np.int64), np.full((U, k), -1, np.int32)


def test_topk_reference_rules():
    state = empty_state(2, 3)
    values = np.array([[5, NAN], [7, -INF], [5, 1], [INF, 1]], np.float32)
    positions = np.arange(8, dtype=np.int32).reshape(4, 2)
    ref.topk_merge(*state, values, positions, np.array([30, 10, 20, 40]))
    # Unit 0: +inf enters and leads; 5 and 5 tie, the lower image id (20) first.
    np.testing.assert_array_equal(state[0][0], [INF, 7, 5])
    np.testing.assert_array_equal(state[1][0], [40, 10, 20])
    np.testing.assert_array_equal(state[2][0], [6, 2, 4])
    # Unit 1: NaN and -inf never enter, so one slot stays empty.
    np.testing.assert_array_equal(state[0][1], [1, 1, -INF])
    np.testing.assert_array_equal(state[1][1], [20, 40, -1])
    np.testing.assert_array_equal(state[2][1], [5, 7, -1])
    ref.topk_merge(*state, np.array([[6, 1]], np.float32), np.array([[9, 9]], np.int32), np.array([15]))
    np.testing.assert_array_equal(state[0][0], [INF, 7, 6])
    np.testing.assert_array_equal(state[1][0], [40, 10, 15])
    np.testing.assert_array_equal(state[0][1], [1, 1, 1])
    np.testing.assert_array_equal(state[1][1], [15, 20, 40])


def test_topk_reference_merges_in_any_order_like_one_merge(rng):
    U, k = 6, 4
    ids = rng.permutation(40)
    values = rng.integers(0, 4, (40, U)).astype(np.float32)
    positions = rng.integers(0, 100, (40, U)).astype(np.int32)
    once = empty_state(U, k)
    ref.topk_merge(*once, values, positions, ids)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, 40), 4, replace=False))
        parts = np.split(np.arange(40), cuts)
        state = empty_state(U, k)
        for i in rng.permutation(len(parts)):
            p = parts[i]
            ref.topk_merge(*state, values[p], positions[p], ids[p])
        for got, want in zip(state, once):
            np.testing.assert_array_equal(got, want)
