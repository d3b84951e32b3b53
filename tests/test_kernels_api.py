"""The Python surface of cnnviz_fast._C: argument errors, DLPack exchange and build_info."""

import numpy as np
import pytest
import torch

from cnnviz_fast import _C
from cnnviz_fast import _reference as ref


def f32(*shape):
    return np.zeros(shape, np.float32)


def u8(*shape):
    return np.zeros(shape, np.uint8)


def topk_state(U=4, k=3):
    return [np.full((U, k), -np.inf, np.float32), np.full((U, k), -1, np.int64), np.full((U, k), -1, np.int32)]


def topk_batch(B=2, U=4):
    return [np.zeros((B, U), np.float32), np.zeros((B, U), np.int32), np.arange(B, dtype=np.int64)]


def merge_with(**changes):
    """topk_merge on a valid state and batch with some arguments replaced."""
    names = ["state_values", "state_ids", "state_positions", "values", "positions", "image_ids"]
    args = dict(zip(names, topk_state() + topk_batch()))
    args.update(changes)
    return lambda: _C.topk_merge(**args)


# (call, what the message must contain): each message names the argument at fault.
ERRORS = {
    "switch_pool-float64": (lambda: _C.switch_pool(np.zeros((1, 1, 4, 4)), 2), "'x'.*float32"),
    "switch_pool-int32": (lambda: _C.switch_pool(np.zeros((1, 1, 4, 4), np.int32), 2), "'x'.*float32"),
    "switch_pool-rank3": (lambda: _C.switch_pool(f32(1, 4, 4), 2), "'x'.*4 dimensions"),
    "switch_pool-list": (lambda: _C.switch_pool([[[[1.0]]]], 1), "'x'"),
    "switch_pool-kernel-256": (lambda: _C.switch_pool(f32(1, 1, 20, 20), 16), "'kernel'.*255"),
    "switch_pool-kernel-0": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 0), "'kernel'"),
    "switch_pool-kernel-negative": (lambda: _C.switch_pool(f32(1, 1, 4, 4), (2, -1)), "'kernel'"),
    "switch_pool-kernel-triple": (lambda: _C.switch_pool(f32(1, 1, 4, 4), (2, 2, 2)), "'kernel'"),
    "switch_pool-kernel-float": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2.0), "'kernel'"),
    "switch_pool-stride-0": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2, stride=0), "'stride'"),
    "switch_pool-padding-negative": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2, padding=-1), "'padding'"),
    "switch_pool-pads-negative": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2, padding=(0, 1, -1, 0)), "'padding'"),
    "switch_pool-dilation-0": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2, dilation=0), "'dilation'"),
    "switch_pool-window-too-large": (lambda: _C.switch_pool(f32(1, 1, 2, 5), 3), "'x'"),
    "switch_pool-dilated-too-large": (lambda: _C.switch_pool(f32(1, 1, 5, 5), 3, dilation=3), "'x'"),
    "switch_pool-stream-on-cpu": (lambda: _C.switch_pool(f32(1, 1, 4, 4), 2, stream=1), "'stream'"),
    "unpool-y-float64": (lambda: _C.unpool(np.zeros((1, 1, 2, 2)), u8(1, 1, 2, 2), 2, output_size=(4, 4)), "'y'.*float32"),
    "unpool-switches-int32": (
        lambda: _C.unpool(f32(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int32), 2, output_size=(4, 4)),
        "'switches'.*uint8",
    ),
    "unpool-y-rank2": (lambda: _C.unpool(f32(2, 2), u8(2, 2), 2, output_size=(4, 4)), "'y'.*4 dimensions"),
    "unpool-shape-mismatch": (lambda: _C.unpool(f32(1, 1, 2, 2), u8(1, 1, 2, 3), 2, output_size=(4, 4)), "'switches'.*shape"),
    "unpool-output-size-missing": (lambda: _C.unpool(f32(1, 1, 2, 2), u8(1, 1, 2, 2), 2), "'output_size'"),
    "unpool-output-size-inconsistent": (lambda: _C.unpool(f32(1, 1, 2, 2), u8(1, 1, 2, 2), 2, output_size=(9, 4)), "'output_size'"),
    "unpool-output-size-negative": (lambda: _C.unpool(f32(1, 1, 2, 2), u8(1, 1, 2, 2), 2, output_size=(-4, 4)), "'output_size'"),
    "unpool-kernel-256": (lambda: _C.unpool(f32(1, 1, 1, 1), u8(1, 1, 1, 1), 16, output_size=(16, 16)), "'kernel'.*255"),
    "unit_max-float64": (lambda: _C.unit_max(np.zeros((1, 1, 2, 2))), "'a'.*float32"),
    "unit_max-rank3": (lambda: _C.unit_max(f32(1, 2, 2)), "'a'.*4 dimensions"),
    "topk_merge-state-ids-int32": (merge_with(state_ids=np.full((4, 3), -1, np.int32)), "'state_ids'.*int64"),
    "topk_merge-state-values-float64": (merge_with(state_values=np.zeros((4, 3))), "'state_values'.*float32"),
    "topk_merge-state-positions-shape": (merge_with(state_positions=np.zeros((4, 2), np.int32)), "'state_positions'.*shape"),
    "topk_merge-state-non-contiguous": (merge_with(state_values=np.zeros((3, 4), np.float32).T), "'state_values'.*contiguous"),
    "topk_merge-state-read-only": (
        merge_with(state_values=np.lib.stride_tricks.as_strided(np.zeros((4, 3), np.float32), writeable=False)),
        "'state_values'.*writable",
    ),
    "topk_merge-k0": (
        merge_with(state_values=f32(4, 0), state_ids=np.zeros((4, 0), np.int64), state_positions=np.zeros((4, 0), np.int32)),
        "'state_values'",
    ),
    "topk_merge-values-units": (merge_with(values=f32(2, 5)), "'values'.*shape"),
    "topk_merge-values-rank1": (merge_with(values=f32(4)), "'values'"),
    "topk_merge-positions-int64": (merge_with(positions=np.zeros((2, 4), np.int64)), "'positions'.*int32"),
    "topk_merge-image-ids-length": (merge_with(image_ids=np.arange(3, dtype=np.int64)), "'image_ids'.*shape"),
    "topk_merge-image-ids-int32": (merge_with(image_ids=np.arange(2, dtype=np.int32)), "'image_ids'.*int64"),
    "topk_store-k0": (lambda: _C.TopKStore(4, 0), "'k'"),
    "topk_store-units-negative": (lambda: _C.TopKStore(-1, 3), "'units'"),
    "topk_store-device": (lambda: _C.TopKStore(4, 3, device="tpu"), "'device'"),
    "topk_store-merge-shape": (lambda: _C.TopKStore(4, 3).merge(*topk_batch(U=5)), "'values'.*shape"),
    "topk_store-load-shape": (lambda: _C.TopKStore(4, 3).load(*[a[:, :2] for a in topk_state()]), "'values'.*shape"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_bad_arguments_raise_an_error_naming_the_argument(name):
    call, message = ERRORS[name]
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_geometry_arguments_accept_ints_pairs_and_onnx_pads(rng, make):
    x = make(rng, (2, 3, 9, 8), "normal")
    for kwargs in (
        dict(kernel=3, stride=2, padding=1, dilation=1),
        dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
        dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1, 1, 1], dilation=[1, 1]),
        dict(kernel=(3, 3), padding=(1, 1, 1, 1), stride=2),
    ):
        y, s = _C.switch_pool(x, **kwargs)
        want_y, want_s = ref.switch_pool(x, 3, 2, 1)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(s, want_s)


def test_torch_cpu_tensors_are_accepted_and_give_numpy(rng, make):
    x = make(rng, (2, 3, 11, 10), "relu")
    t = torch.from_numpy(x)
    for view in (t, t.transpose(2, 3)):
        y, s = _C.switch_pool(view, 3, 2)
        assert isinstance(y, np.ndarray) and isinstance(s, np.ndarray)
        want_y, want_s = ref.switch_pool(view.numpy(), 3, 2)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(s, want_s)
        back = _C.unpool(torch.from_numpy(y), torch.from_numpy(s), 3, 2, output_size=tuple(view.shape[2:]))
        assert isinstance(back, np.ndarray)
        np.testing.assert_array_equal(back, ref.unpool(y, s, 3, 2, output_size=tuple(view.shape[2:])))
        values, positions = _C.unit_max(view)
        assert isinstance(values, np.ndarray) and isinstance(positions, np.ndarray)
        want_values, want_positions = ref.unit_max(view.numpy())
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(positions, want_positions)


def test_torch_cpu_batches_merge_into_a_numpy_state(rng):
    values = torch.from_numpy(rng.integers(0, 3, (6, 5)).astype(np.float32))
    positions = torch.arange(30, dtype=torch.int32).reshape(6, 5)
    ids = torch.arange(10, 16, dtype=torch.int64)
    state = topk_state(U=5, k=4)
    _C.topk_merge(*state, values, positions, ids)
    want = topk_state(U=5, k=4)
    ref.topk_merge(*want, values.numpy(), positions.numpy(), ids.numpy())
    for got, w in zip(state, want):
        np.testing.assert_array_equal(got, w)


def test_wrong_dtype_through_dlpack_names_the_argument():
    with pytest.raises((TypeError, ValueError), match="'x'.*float32"):
        _C.switch_pool(torch.zeros(1, 1, 4, 4, dtype=torch.float64), 2)
    with pytest.raises((TypeError, ValueError), match="'switches'.*uint8"):
        _C.unpool(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int64), 2, output_size=(4, 4))


def test_build_info_reports_what_was_compiled():
    info = _C.build_info()
    assert {"version", "cuda", "cuda_archs", "openmp"} <= set(info)
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert bool(info["cuda_archs"]) == info["cuda"]
    count = _C.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not info["cuda"]:
        assert count == 0


def test_cuda_store_without_cuda_says_why():
    if _C.build_info()["cuda"] and _C.cuda_device_count() > 0:
        pytest.skip("a GPU is present, so a CUDA store can be made")
    with pytest.raises(ValueError, match="cuda"):
        _C.TopKStore(4, 3, device="cuda")


def needs_torch_cuda():
    if not torch.cuda.is_available():
        pytest.skip("this test moves arrays with torch, which has no CUDA here")


@pytest.mark.cuda
def test_cuda_outputs_are_device_arrays_that_torch_imports(rng, make):
    needs_torch_cuda()
    x = make(rng, (2, 3, 9, 9), "normal")
    y, s = _C.switch_pool(torch.from_numpy(x).cuda(), 3, 2)
    assert isinstance(y, _C.DeviceArray) and isinstance(s, _C.DeviceArray)
    assert tuple(y.shape) == (2, 3, 4, 4) and y.dtype == "float32" and s.dtype == "uint8"
    assert y.__dlpack_device__()[0] == 2  # kDLCUDA
    yt, st = torch.from_dlpack(y), torch.from_dlpack(s)
    assert yt.is_cuda and yt.dtype == torch.float32 and st.dtype == torch.uint8
    want_y, want_s = ref.switch_pool(x, 3, 2)
    np.testing.assert_array_equal(yt.cpu().numpy(), want_y)
    np.testing.assert_array_equal(st.cpu().numpy(), want_s)
    # A DeviceArray is itself a valid input, and torch views of one are too.
    back = _C.unpool(y, st, 3, 2, output_size=(9, 9))
    np.testing.assert_array_equal(back.numpy(), ref.unpool(want_y, want_s, 3, 2, output_size=(9, 9)))


@pytest.mark.cuda
def test_cuda_and_cpu_arrays_in_one_call_are_refused(rng, make):
    needs_torch_cuda()
    y, s = _C.switch_pool(torch.from_numpy(make(rng, (1, 2, 8, 8), "normal")).cuda(), 2)
    with pytest.raises(ValueError, match="'switches'.*cpu"):
        _C.unpool(y, s.numpy(), 2, output_size=(8, 8))
    with pytest.raises(ValueError, match="'y'.*cpu"):
        _C.unpool(y.numpy(), s, 2, output_size=(8, 8))
    state = [torch.from_numpy(a).cuda() for a in topk_state()]
    with pytest.raises(ValueError, match="'values'.*cpu"):
        _C.topk_merge(*state, *topk_batch())


@pytest.mark.cuda
def test_strided_cuda_input_is_refused_with_the_argument_name():
    needs_torch_cuda()
    x = torch.zeros(1, 2, 8, 8, device="cuda").transpose(2, 3)
    with pytest.raises(ValueError, match="'x'.*contiguous"):
        _C.switch_pool(x, 2)


@pytest.mark.cuda
def test_cuda_ops_run_on_a_caller_given_stream(rng, make):
    needs_torch_cuda()
    x = make(rng, (2, 4, 12, 11), "relu")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        xt = torch.from_numpy(x).cuda()
        y, s = _C.switch_pool(xt, 3, 2, 1, stream=side.cuda_stream)
        back = _C.unpool(y, s, 3, 2, 1, output_size=(12, 11), stream=side.cuda_stream)
        values, positions = _C.unit_max(xt, stream=side.cuda_stream)
    want_y, want_s = ref.switch_pool(x, 3, 2, 1)
    np.testing.assert_array_equal(y.numpy(), want_y)
    np.testing.assert_array_equal(s.numpy(), want_s)
    np.testing.assert_array_equal(back.numpy(), ref.unpool(want_y, want_s, 3, 2, 1, output_size=(12, 11)))
    want_values, want_positions = ref.unit_max(x)
    np.testing.assert_array_equal(values.numpy(), want_values)
    np.testing.assert_array_equal(positions.numpy(), want_positions)
