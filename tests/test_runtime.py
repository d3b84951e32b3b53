"""cnnviz_fast.runtime: device resolution, providers, sessions, streams, pinned memory, threads."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from cnnviz_fast import _C, runtime
from cnnviz_fast.errors import DeviceUnavailable

PACKAGE = Path(runtime.__file__).parent
ROOT = PACKAGE.parents[1]
CUDA_BLOCKER = runtime.cuda_blocker()
NATIVE_BLOCKER = runtime.native_cuda_blocker()


def relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def sources(*roots):
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            yield path, path.read_text()


@pytest.mark.skipif(CUDA_BLOCKER is None, reason="CUDA is usable here")
def test_auto_resolves_to_the_cpu_and_says_why():
    target = runtime.resolve_device("auto")
    assert (target.memory, target.provider, target.name) == ("cpu", "cpu", "cpu")
    assert target.reason.startswith("device: cpu (auto") and CUDA_BLOCKER in target.reason
    assert runtime.resolve_device(None) == target


@pytest.mark.skipif(CUDA_BLOCKER is None, reason="CUDA is usable here")
def test_explicit_cuda_raises_with_the_reason():
    with pytest.raises(DeviceUnavailable) as info:
        runtime.resolve_device("cuda")
    assert str(info.value) == f"device='cuda' cannot be used: {CUDA_BLOCKER}"
    with pytest.raises(DeviceUnavailable, match="^--device cuda cannot be used: "):
        runtime.resolve_device("CUDA", option="--device")


def test_cpu_and_bad_names():
    target = runtime.resolve_device("cpu")
    assert (target.memory, target.provider) == ("cpu", "cpu") and "asked for" in target.reason
    assert runtime.as_target(target) is target
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        runtime.resolve_device("gpu")
    assert runtime.DEVICES == ("auto", *runtime.PLACEMENTS) == ("auto", "cpu", "cuda")


def test_a_provider_is_one_registry_entry(monkeypatch):
    """A new provider (here one that runs on ORT's CPU EP) needs a PROVIDERS and a PLACEMENTS entry,
    and resolution, refusal and sessions follow."""
    blocked = {"why": "the alt EP is not installed: pip install alt"}
    seen = []

    def options(target, stream):
        seen.append((target, stream))
        return {}

    monkeypatch.setitem(runtime.PROVIDERS, "alt", runtime.Provider("CPUExecutionProvider", lambda: blocked["why"],
                                                                    options))
    monkeypatch.setitem(runtime.PLACEMENTS, "alt", ("cpu", "alt"))
    with pytest.raises(DeviceUnavailable, match="device='alt' cannot be used: the alt EP is not installed"):
        runtime.resolve_device("alt")
    blocked["why"] = None
    target = runtime.resolve_device("alt")
    assert (target.memory, target.provider) == ("cpu", "alt")
    sess = runtime.session(relu_model(), target, threads=1)
    assert seen == [(target, None)] and sess.get_providers() == ["CPUExecutionProvider"]


def test_native_blocker_names_the_missing_piece(monkeypatch):
    monkeypatch.setattr(runtime, "build_info", lambda: {"cuda": False})
    assert "built without CUDA kernels" in runtime.native_cuda_blocker()
    monkeypatch.setattr(runtime, "build_info", lambda: {"cuda": True, "cuda_runtime_version": "13.0"})
    monkeypatch.setattr(runtime, "gpu_count", lambda: (0, "no NVIDIA driver"))
    assert runtime.native_cuda_blocker() == "no GPU: no NVIDIA driver"
    monkeypatch.setattr(runtime, "gpu_count", lambda: (1, "1 GPU(s) visible to the driver"))
    monkeypatch.setattr(_C, "cuda_device_count", lambda: 0)
    assert "driver is older than that runtime" in runtime.native_cuda_blocker()
    monkeypatch.setattr(_C, "cuda_device_count", lambda: 1)
    assert runtime.native_cuda_blocker() is None
    monkeypatch.setattr(runtime, "ort_cuda_status", lambda: (False, "no CUDA EP here"))
    assert runtime.cuda_blocker() == "no CUDA EP here"
    with pytest.raises(DeviceUnavailable, match="no CUDA EP here"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("auto").reason.endswith("no CUDA EP here)")
    monkeypatch.setattr(runtime, "ort_cuda_status", lambda: (True, "ONNX Runtime CUDA EP loaded"))
    target = runtime.resolve_device("auto")
    assert (target.memory, target.provider) == ("cuda", "cuda") and "all present" in target.reason


def test_cores_follows_the_affinity_mask(monkeypatch):
    assert runtime.cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7})
    assert runtime.cores() == 3


def test_session_options_are_honoured():
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    for threads, arena, spinning in ((3, "session", False), (1, "none", True), (2, "shared", False)):
        sess = runtime.session(relu_model(), "cpu", threads=threads, arena=arena, spinning=spinning)
        so = sess.get_session_options()
        assert so.intra_op_num_threads == threads and so.inter_op_num_threads == 1
        assert so.enable_cpu_mem_arena == (arena != "none")
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
        if arena == "shared":
            assert so.get_session_config_entry("session.use_env_allocators") == "1"
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    default = runtime.session(relu_model().SerializeToString()).get_session_options()
    assert default.intra_op_num_threads == runtime.cores()
    with pytest.raises(ValueError, match="arena"):
        runtime.session(relu_model(), arena="big")


def test_projector_and_miner_threads_reach_their_sessions():
    from cnnviz_fast.graph import Model
    from cnnviz_fast.mining._session import ForwardSession
    from cnnviz_fast.projection._device import Device

    model = Model.load("demo")
    sess = ForwardSession(model, model.layers[:1], "cpu", threads=1).session
    assert sess.get_session_options().intra_op_num_threads == 1
    dev = Device("cpu", threads=2)
    assert dev.session(relu_model(), once_per_batch=True).get_session_options().intra_op_num_threads == 2


def test_a_cuda_session_needs_its_stream():
    with pytest.raises(ValueError, match="stream"):
        runtime.session(relu_model(), runtime.Target("cuda", "cuda"))


@pytest.mark.skipif(runtime.ort_cuda_status()[0], reason="ONNX Runtime's CUDA EP loads here")
def test_a_dropped_provider_raises():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA EP to drop")

    class FakeStream:  # never used: the EP fails to load before it would run anything
        handle = 0

    with pytest.raises(DeviceUnavailable, match="did not keep the CUDAExecutionProvider for a test graph"):
        runtime.session(relu_model(), runtime.Target("cuda", "cuda"), stream=FakeStream(), what="a test graph")


def test_every_ort_session_comes_from_runtime():
    offenders = [str(p.relative_to(ROOT)) for p, text in sources(PACKAGE, ROOT / "benchmarks")
                 if "InferenceSession(" in text and p != PACKAGE / "runtime.py"]
    assert offenders == []


def test_no_ctypes_cuda_runtime_and_one_core_count():
    text = {p: t for p, t in sources(PACKAGE, ROOT / "benchmarks")}
    assert [p for p, t in text.items() if re.search(r"libcudart|cudaHostRegister|cudaStreamCreate", t)] == []
    assert [p.name for p, t in text.items() if "sched_getaffinity" in t] == ["runtime.py"]


def test_mining_and_projection_runs_open_sessions_through_runtime(monkeypatch, tmp_path):
    from cnnviz_fast import mine
    from cnnviz_fast.datasets.synthetic import generate
    from cnnviz_fast.graph import Model
    from cnnviz_fast.projection import Projector

    calls = []
    real = runtime.session

    def spy(model, target=runtime.CPU, **kw):
        calls.append(kw.get("what"))
        return real(model, target, **kw)

    monkeypatch.setattr(runtime, "session", spy)
    model = Model.load("demo")
    generate(tmp_path / "images", 6, size=48)
    mine(model, tmp_path / "images", tmp_path / "run", device="cpu", top_k=2, batch_size=4, workers=1,
         progress="none")
    assert any(c and "mining graph" in c for c in calls)
    calls.clear()
    x = np.random.default_rng(0).normal(size=(1, *model.input_size)).astype(np.float32)
    layer = model.layers[0].name
    Projector(model, device="cpu").project(x, layer=layer, seeds=[(0, 0)])
    assert calls and all(c == "a projection graph" for c in calls)


@pytest.mark.skipif(NATIVE_BLOCKER is None, reason="the native CUDA kernels can run here")
def test_native_streams_and_pinned_memory_raise_clearly_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        _C.cuda_stream_create(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        _C.cuda_pinned_empty(64)
    with pytest.raises(ValueError, match="nbytes"):
        _C.cuda_pinned_empty(0)
    with pytest.raises(DeviceUnavailable, match="cannot create a CUDA stream: .*CUDA"):
        runtime.Stream()
    with pytest.raises(DeviceUnavailable, match="page-locked"):
        runtime.pinned_empty((4, 4), np.uint8, runtime.Target("cuda", "cuda"))
    assert runtime.cuda_stream(runtime.CPU) is None
    host = runtime.pinned_empty((2, 5), np.int32)
    assert host.shape == (2, 5) and host.dtype == np.int32


@pytest.mark.cuda
def test_cuda_stream_and_pinned_memory_work():
    import torch

    target = runtime.Target("cuda", "cuda")
    buf = runtime.pinned_empty((3, 4, 5, 6), np.float32, target)
    assert buf.shape == (3, 4, 5, 6) and buf.flags.c_contiguous and buf.flags.writeable
    buf[...] = np.random.default_rng(0).normal(size=buf.shape)
    assert torch.from_numpy(buf).is_pinned()
    stream = runtime.cuda_stream(target)
    values, positions = _C.unit_max(torch.from_numpy(buf).cuda(), stream=stream.handle)
    stream.synchronize()
    flat = buf.reshape(3, 4, -1)
    np.testing.assert_array_equal(torch.from_dlpack(values).cpu().numpy(), flat.max(-1))
    np.testing.assert_array_equal(torch.from_dlpack(positions).cpu().numpy(), flat.argmax(-1))
    stream.close()
    stream.close()  # a second close does nothing


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_BLOCKER is not None, reason=f"CUDA sessions cannot run here: {CUDA_BLOCKER}")
def test_cuda_session_runs_on_its_stream():
    target = runtime.resolve_device("cuda")
    stream = runtime.cuda_stream(target)
    sess = runtime.session(relu_model(), target, stream=stream, deterministic=True)
    opts = sess.get_provider_options()["CUDAExecutionProvider"]
    assert opts["user_compute_stream"] == str(stream.handle) and opts["use_tf32"] == "0"
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
