"""Loading: validation, BN folding, dynamic batch, external data, metadata, layer names and taps."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import helper

from cnnviz_fast.graph import InvalidModel
from cnnviz_fast.graph import Model
from test_graph_helpers import const, foreign_model, make_model, run


@pytest.fixture(scope="module")
def foreign():
    return Model.from_proto(foreign_model(), name="foreign")


def test_foreign_model_loads_with_derived_layers(foreign):
    # Named ReLU nodes give their name; the unnamed one its output tensor's.
    assert [layer.name for layer in foreign.layers] == ["act1", "relu2_out"]
    assert [(layer.name, layer.kind, layer.units, layer.map_shape) for layer in foreign.all_layers] == [
        ("act1", "conv", 6, (21, 21)), ("relu2_out", "conv", 8, (6, 5)), ("fc_act", "fc", 16, (1, 1))]
    assert foreign.input_name == "pixels" and foreign.input_size == (3, 21, 21)
    assert foreign.name == "foreign" and foreign.labels is None
    assert foreign.preprocess["crop"] == 21 and foreign.preprocess["mean"] == [0.485, 0.456, 0.406]


def test_batchnorm_folded_and_outputs_match(foreign):
    assert foreign.folded_batchnorms == 2
    assert not [n for n in foreign.proto.graph.node if n.op_type == "BatchNormalization"]
    original = foreign_model()
    x = np.random.default_rng(1).normal(size=(1, 3, 21, 21)).astype(np.float32)
    taps = ["r1", "relu2_out", "f1", "logits"]
    for t in taps[:-1]:
        original.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    want = run(original, {"pixels": x}, taps)
    got = run(foreign.mining_graph(["act1", "relu2_out", "fc_act"], heads="native"), {"pixels": x})
    got["logits"] = run(foreign.proto, {"pixels": x}, ["logits"])["logits"]
    for t in taps:
        scale = np.abs(want[t]).max()
        assert np.abs(got[t] - want[t]).max() <= 1e-5 * scale, t


def test_batchnorm_after_conv_without_bias_and_unfoldable_bn():
    """A BN on the image input cannot fold: it stays, and loading still works."""
    rng = np.random.default_rng(0)
    bn = [const(f"p{k}", rng.uniform(0.5, 1.5, 3).astype(np.float32)) for k in range(4)]
    nodes = [helper.make_node("BatchNormalization", ["pixels", "p0", "p1", "p2", "p3"], ["n0"], "bn_in"),
             helper.make_node("Conv", ["n0", "w"], ["c"], "conv"),
             helper.make_node("BatchNormalization", ["c", "p0", "p1", "p2", "p3"], ["n1"], "bn_conv"),
             helper.make_node("Relu", ["n1"], ["out"], "relu")]
    proto = make_model(nodes, [*bn, const("w", rng.normal(size=(3, 3, 1, 1)).astype(np.float32))],
                       ["N", 3, 5, 5])
    model = Model.from_proto(proto)
    assert model.folded_batchnorms == 1
    assert [n.name for n in model.proto.graph.node if n.op_type == "BatchNormalization"] == ["bn_in"]
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    want, got = run(proto, {"pixels": x})["out"], run(model.proto, {"pixels": x})["out"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_fixed_batch_becomes_dynamic(foreign):
    x = np.random.default_rng(2).normal(size=(3, 3, 21, 21)).astype(np.float32)
    batched = run(foreign.proto, {"pixels": x})["logits"]
    single = np.concatenate([run(foreign_model(), {"pixels": x[i:i + 1]})["logits"] for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_reshape_spelling_the_batch_is_freed():
    nodes = [helper.make_node("Relu", ["pixels"], ["r"], "relu"),
             helper.make_node("Reshape", ["r", "shape"], ["out"], "flat")]
    proto = make_model(nodes, [const("shape", np.array([1, -1], np.int64))], [1, 3, 4, 4])
    model = Model.from_proto(proto)
    out = run(model.proto, {"pixels": np.ones((2, 3, 4, 4), np.float32)})["out"]
    assert out.shape == (2, 48)


def test_external_data_and_sha256(tmp_path):
    proto = foreign_model()
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    model = Model.load(path)
    assert model.path == path and model.name == "model"
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.random.default_rng(3).normal(size=(1, 3, 21, 21)).astype(np.float32)
    np.testing.assert_allclose(run(model.proto, {"pixels": x})["logits"],
                               run(foreign_model(), {"pixels": x})["logits"], rtol=1e-5, atol=1e-5)


def test_taps_spec(foreign):
    assert foreign.taps() == foreign.layers and foreign.taps("all") == foreign.all_layers
    assert [layer.name for layer in foreign.taps("fc_act, act1")] == ["fc_act", "act1"]
    assert foreign.taps(["r1"])[0].name == "act1"  # a tapped tensor's name finds its layer
    raw = foreign.layer("pool1")  # any image-dependent tensor can be tapped by name
    assert (raw.kind, raw.units, raw.map_shape, raw.rf_size, raw.rf_stride) == ("conv", 6, (11, 11), (5, 5), (2, 2))
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*available: act1, relu2_out, fc_act"):
        foreign.taps(["act1", "conv9"])
    assert foreign.layer("fc_act").slug == "fc_act"


def test_unique_names_for_unnamed_and_clashing_nodes():
    w = const("w", np.ones((2, 3, 1, 1), np.float32))
    w2 = const("w2", np.ones((2, 2, 1, 1), np.float32))
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c1"]), helper.make_node("Relu", ["c1"], ["a"], "same"),
             helper.make_node("Conv", ["a", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["out"], "same")]
    model = Model.from_proto(make_model(nodes, [w, w2], [1, 3, 4, 4]))
    assert [layer.name for layer in model.layers] == ["same", "out"]


def _input(shape, name="pixels", elem=onnx.TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.mark.parametrize("shape, message", [
    (["N", 1, 8, 8], r"must be \[N, 3, H, W\] with fixed H and W, got \['\?', 1, 8, 8\]"),
    (["N", 3, "h", 8], r"must be \[N, 3, H, W\] with fixed H and W"),
    (["N", 3, 8], r"must be \[N, 3, H, W\]"),
])
def test_bad_image_input(shape, message):
    g = helper.make_graph([helper.make_node("Relu", ["pixels"], ["out"])], "g", [_input(shape)],
                          [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, shape)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModel, match=message):
        Model.from_proto(proto)


def test_two_inputs_and_old_opset_refused():
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["out"])], "g",
                          [_input([1, 3, 4, 4], "a"), _input([1, 3, 4, 4], "b")], [_input([1, 3, 4, 4], "out")])
    with pytest.raises(InvalidModel, match=r"exactly one image input.*found 2 \(a, b\)"):
        Model.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    g = helper.make_graph([helper.make_node("Relu", ["a"], ["out"])], "g", [_input([1, 3, 4, 4], "a")],
                          [_input([1, 3, 4, 4], "out")])
    with pytest.raises(InvalidModel, match="opset 10 is too old"):
        Model.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)]))


def test_not_onnx_and_missing_files(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00 this is not a protobuf \xff" * 10)
    with pytest.raises(InvalidModel, match="not a readable ONNX model|not an ONNX model"):
        Model.load(bad)
    with pytest.raises(InvalidModel, match="no such file, and not a zoo model"):
        Model.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="needs weights"):
        Model.load("vgg16")
    with pytest.raises(ValueError, match="zoo models only"):
        Model.load(bad, random_weights=True)


def test_zoo_model_metadata():
    model = Model.load("zoo:zfnet", random_weights=True)
    assert model.name == "zfnet" and model.input_name == "input"
    assert [layer.name for layer in model.all_layers] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert [layer.tensor for layer in model.layers] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert model.preprocess["crop"] == 224 and model.info.get("random_weights") is True
    assert Model.load("zfnet", random_weights=True).path == model.path  # cached export


def test_demo_model_loads():
    model = Model.load("demo")
    assert model.name == "demo" and model.layers and model.labels
    assert all(layer.kind == "conv" for layer in model.layers)
