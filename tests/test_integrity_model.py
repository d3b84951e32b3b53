"""Hostile or broken models and weights (issue 11): a Constant node's external data is read from
the model's folder (never the working directory) and a location outside it is refused; a model
declaring a huge input is refused before anything is allocated; zero std is refused before
results.db exists; torch's advice to disable weights_only is never passed on; a malformed
.safetensors file gives a message."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cnnviz_fast.graph import Model
from _support.mining import tiny  # noqa: F401

W = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 100


def _constant_conv(location: str) -> onnx.ModelProto:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(W.shape))
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(W.nbytes))):
        weight.external_data.add(key=key, value=value)
    nodes = [helper.make_node("Constant", [], ["w"], value=weight),
             helper.make_node("Conv", ["pixels", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weights_of(model: Model) -> np.ndarray:
    from onnx import numpy_helper

    for node in model.proto.graph.node:
        if node.op_type == "Conv":
            name = node.input[1]
            for t in model.proto.graph.initializer:
                if t.name == name:
                    return numpy_helper.to_array(t)
    raise AssertionError("no Conv weight found")


def test_constant_external_data_is_read_from_the_model_folder_not_the_cwd(tmp_path, monkeypatch):
    folder, cwd = tmp_path / "model", tmp_path / "cwd"
    folder.mkdir(), cwd.mkdir()
    (cwd / "w.bin").write_bytes((W * 0 + 7).tobytes())     # an unrelated local file with the same name
    onnx.save(_constant_conv("w.bin"), folder / "m.onnx")
    monkeypatch.chdir(cwd)
    with pytest.raises(ValueError):                        # not in the model's folder: refused
        Model.load(folder / "m.onnx")
    (folder / "w.bin").write_bytes(W.tobytes())
    np.testing.assert_array_equal(_weights_of(Model.load(folder / "m.onnx")), W)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname"])
def test_constant_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(W.tobytes())
    onnx.save(_constant_conv(location), folder / "m.onnx")
    with pytest.raises(ValueError):
        Model.load(folder / "m.onnx")


def cnnviz(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def _fully_convolutional(side: int) -> onnx.ModelProto:
    from onnx import numpy_helper

    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, side, side])],
                              [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ('{"resize": %d, "crop": %d, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}' % (side, side))
    helper.set_model_props(model, {"cnnviz.preprocess": meta})
    return model


def test_a_huge_declared_input_is_refused_before_allocating(tmp_path):
    from cnnviz_fast.datasets.synthetic import generate

    data = tmp_path / "data"
    generate(data, 4, seed=1, size=32)
    onnx.save(_fully_convolutional(100_000), tmp_path / "huge.onnx")
    p = cnnviz("mine", tmp_path / "huge.onnx", data, "--out", tmp_path / "out", "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "100000" in p.stderr.replace(",", "") and "GiB" in p.stderr, p.stderr
    assert not (tmp_path / "out" / "results.db").exists()


def test_zero_std_is_refused_before_results_db_exists(tiny, tmp_path):  # noqa: F811
    from cnnviz_fast.datasets.synthetic import generate

    proto = onnx.load(tiny)
    for prop in proto.metadata_props:
        if prop.key == "cnnviz.preprocess":
            import json

            meta = json.loads(prop.value)
            meta["std"] = [0, 0, 0]
            prop.value = json.dumps(meta)
    onnx.save(proto, tmp_path / "zero.onnx")
    data = tmp_path / "data"
    generate(data, 4, seed=1, size=32)
    p = cnnviz("mine", tmp_path / "zero.onnx", data, "--out", tmp_path / "out", "--quiet")
    assert p.returncode == 2 and "std" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out" / "results.db").exists()


def test_weights_messages_never_suggest_weights_only_false(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    evil = tmp_path / "evil.pth"
    subprocess.run([sys.executable, "-c", "import torch, sys\nclass Foo: pass\ntorch.save({'a': Foo()}, sys.argv[1])",
                    str(evil)], check=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for weights, words in ((evil, "Unsupported global"), (bad, "not a readable .safetensors file")):
        p = cnnviz("zoo", "export", "alexnet", "--weights", weights, "-o", tmp_path / "x.onnx")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert words in p.stderr, p.stderr
        assert "weights_only set to False" not in p.stderr and "False" not in p.stderr, p.stderr
        assert "add_safe_globals" not in p.stderr, p.stderr
    assert torch is not None
