"""Projector API: determinism, batching, Forward reuse, seed and input checks, UnsupportedOp,
device selection, uint8 switch memory, and the CUDA path (skipped where it cannot run)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnviz_fast.graph import UnsupportedOp
from cnnviz_fast.graph import Model
from cnnviz_fast.projection import DeviceUnavailable, Forward, Projector
from cnnviz_fast.runtime import cuda_blocker
from cnnviz_fast.testing import MODES, assert_close, pick_seeds
from _support.onnx_models import ort_tap

CUDA_BLOCKER = cuda_blocker()


@pytest.fixture(scope="module")
def demo():
    model = Model.load("demo")
    x = np.random.default_rng(7).normal(size=(4, *model.input_size)).astype(np.float32)
    return model, x


def _seeds(model, x, layer, count=6):
    return pick_seeds(ort_tap(model, x, layer), count)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("windowed", [True, False])
def test_same_seeds_give_bit_identical_output(demo, mode, windowed):
    model, x = demo
    p = Projector(model, device="cpu", mode=mode, windowed=windowed)
    seeds = _seeds(model, x, "conv4")
    first = p.project(x, layer="conv4", seeds=seeds)
    np.testing.assert_array_equal(first, p.project(x, layer="conv4", seeds=seeds))
    again = Projector(model, device="cpu", mode=mode, windowed=windowed)
    np.testing.assert_array_equal(first, again.project(x, layer="conv4", seeds=seeds))
    assert np.abs(first).max() > 0


def test_batch_size_and_seed_order_do_not_change_results(demo):
    model, x = demo
    seeds = _seeds(model, x, "conv3") * 3
    whole = Projector(model, device="cpu").project(x, layer="conv3", seeds=seeds)
    small = Projector(model, device="cpu", batch=4).project(x, layer="conv3", seeds=seeds)
    assert_close(small, whole, rtol=1e-6)
    rev = Projector(model, device="cpu").project(x, layer="conv3", seeds=seeds[::-1])
    assert_close(rev[::-1], whole, rtol=1e-6)
    np.testing.assert_array_equal(whole[: len(seeds) // 3], whole[len(seeds) // 3: 2 * len(seeds) // 3])


def test_forward_once_for_several_layers(demo):
    model, x = demo
    p = Projector(model, device="cpu")
    fwd = p.forward(x, ["conv1", "conv3", "fc1"])
    assert isinstance(fwd, Forward) and fwd.images == len(x)
    for name in ("conv1", "conv3", "fc1"):
        seeds = _seeds(model, x, name, 3)
        np.testing.assert_array_equal(p.project(fwd, layer=name, seeds=seeds),
                                      p.project(x, layer=name, seeds=seeds))
    with pytest.raises(ValueError, match="made for layers"):
        p.project(fwd, layer="conv2", seeds=[(0, 0, 0, 0)])


def test_seed_values_are_the_tapped_activations(demo):
    model, x = demo
    p = Projector(model, device="cpu")
    for name in ("conv2", "fc1"):
        seeds = _seeds(model, x, name, 4)
        tap = ort_tap(model, x, name)
        want = [tap[s] for s in seeds]
        np.testing.assert_array_equal(p.seed_values(x, name, seeds), np.array(want, np.float32))


def test_fc_seeds_and_whole_image_boxes(demo):
    model, x = demo
    p = Projector(model, device="cpu")
    seeds = _seeds(model, x, "fc1", 3)
    assert all(len(s) == 2 for s in seeds)
    full = p.project(x, layer="fc1", seeds=seeds)
    np.testing.assert_array_equal(full, p.project(x, layer="fc1", seeds=[(*s, 0, 0) for s in seeds]))
    np.testing.assert_array_equal(p.project_boxes(x, layer="fc1", seeds=seeds), full)  # R = the image


def test_seed_and_image_checks(demo):
    model, x = demo
    p = Projector(model, device="cpu")
    for bad in ([(4, 0, 0, 0)], [(0, 32, 0, 0)], [(0, 0, 32, 0)], [(0, 0, 0, -1)]):
        with pytest.raises(ValueError, match="outside layer conv1"):
            p.project(x, layer="conv1", seeds=bad)
    with pytest.raises(ValueError, match=r"\(n, c, y, x\)"):
        p.project(x, layer="conv1", seeds=[(0, 0, 0)])
    with pytest.raises(ValueError, match=r"float32 \[N, 3, 64, 64\]"):
        p.project(x[:, :, :32], layer="conv1", seeds=[(0, 0, 0, 0)])
    with pytest.raises(ValueError, match="unknown layer"):
        p.project(x, layer="conv9", seeds=[(0, 0, 0, 0)])
    with pytest.raises(ValueError, match="mode"):
        Projector(model, device="cpu", mode="saliency")
    assert p.project(x, layer="conv2", seeds=[]).shape == (0, 3, 64, 64)


def test_unsupported_op_is_the_graph_compilers_error():
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
              for n, s in (("w1", (4, 3, 3, 3)), ("w2", (5, 4, 3, 3))))
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Sin", ["r1"], ["s1"], "squash"),
             helper.make_node("Conv", ["s1", "w2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], "relu2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 9, 9])],
                              [helper.make_tensor_value_info("r2", TensorProto.FLOAT, None)], [w1, w2])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = Model.from_proto(proto)
    p = Projector(model, device="cpu")
    x = rng.normal(size=(1, 3, 9, 9)).astype(np.float32)
    assert p.project(x, layer="relu1", seeds=[(0, 0, 4, 4)]).shape == (1, 3, 9, 9)
    with pytest.raises(UnsupportedOp) as info:
        p.project(x, layer="relu2", seeds=[(0, 0, 4, 4)])
    assert (info.value.node, info.value.op_type) == ("squash", "Sin")


def test_switch_memory_is_uint8():
    model = Model.load("zfnet", random_weights=True, seed=0)
    p = Projector(model, device="cpu")
    u8, i64 = p.switch_bytes(images=64)
    assert u8 == 64 * (96 * 55 * 55 + 256 * 13 * 13)  # pool1 and pool2 (conv layers only)
    assert i64 == 8 * u8
    x = np.random.default_rng(0).normal(size=(2, *model.input_size)).astype(np.float32)
    fwd = p.forward(x, ["conv5"])
    p.project(fwd, layer="conv5", seeds=[(0, 0, 6, 6)])
    # Recorded once per image, kept as uint8 rows plus one fill row per pool.
    assert fwd.switch_bytes == 2 * (96 * 55 * 55 + 256 * 13 * 13) + 96 + 256


@pytest.mark.skipif(CUDA_BLOCKER is None, reason="CUDA is usable here")
def test_explicit_cuda_without_cuda_raises_with_the_reason(demo):
    with pytest.raises(DeviceUnavailable, match="device='cuda' cannot be used: "):
        Projector(demo[0], device="cuda")
    assert Projector(demo[0], device="auto").device.name == "cpu"


@pytest.mark.skipif(CUDA_BLOCKER is not None, reason=f"CUDA projector cannot run here: {CUDA_BLOCKER}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("windowed", [True, False])
def test_cuda_equals_cpu_and_is_deterministic(demo, mode, windowed):
    model, x = demo
    gpu = Projector(model, device="cuda", mode=mode, windowed=windowed)
    cpu = Projector(model, device="cpu", mode=mode, windowed=windowed)
    for name in ("conv1", "conv4", "fc1"):
        seeds = _seeds(model, x, name, 4)
        got = gpu.project(x, layer=name, seeds=seeds)
        assert_close(got, cpu.project(x, layer=name, seeds=seeds))
        np.testing.assert_array_equal(got, gpu.project(x, layer=name, seeds=seeds))
        assert_close(gpu.project_boxes(x, layer=name, seeds=seeds), cpu.project_boxes(x, layer=name, seeds=seeds))


def test_the_projector_does_not_import_torch():
    code = ("import sys, numpy as np\n"
            "from cnnviz_fast.graph import Model\n"
            "from cnnviz_fast.projection import Projector\n"
            "p = Projector(Model.load('demo'), device='cpu')\n"
            "p.project(np.zeros((1, 3, 64, 64), np.float32), layer='conv2', seeds=[(0, 0, 1, 1)])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
