"""Loading: validation, BN folding, dynamic batch, external data, metadata, layer names and taps."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import helper

from cnnviz_fast.graph import InvalidModel
from cnnviz_fast.graph import Model
from _support.onnx_models import const, foreign_model, make_model, run


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
    (["N", 1, 8, 8], r"must be \[N, 3, H, W\] \(or \[N, H, W, 3\]\) with fixed H and W, got \['\?', 1, 8, 8\]"),
    (["N", 3, "h", 8], r"must be \[N, 3, H, W\] \(or \[N, H, W, 3\]\) with fixed H and W"),
    (["N", "h", 8, 3], r"must be \[N, 3, H, W\] \(or \[N, H, W, 3\]\) with fixed H and W"),
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


def _nhwc_model(rescale: bool, batch="unk__7"):
    """A Keras model as tf2onnx writes it: NHWC input (optionally rescaled in NHWC), Transpose to
    NCHW, two Conv+Relu with a MaxPool, Transpose back to NHWC, flatten in NHWC order, MatMul."""
    rng = np.random.default_rng(4)
    inits = [const("w1", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
             const("w2", rng.normal(size=(5, 4, 3, 3)).astype(np.float32)),
             const("scale", np.array([1 / 255, 1 / 128, 1 / 64], np.float32)),
             const("flat", np.array([-1, 6 * 6 * 5], np.int64)),
             const("fc", rng.normal(size=(6 * 6 * 5, 3)).astype(np.float32))]
    first = "input_1"
    nodes = []
    if rescale:
        nodes.append(helper.make_node("Mul", ["input_1", "scale"], ["scaled"], "rescaling/mul"))
        first = "scaled"
    nodes += [helper.make_node("Transpose", [first], ["nchw"], "conv1_tr", perm=[0, 3, 1, 2]),
              helper.make_node("Conv", ["nchw", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"], "conv1/Relu"),
              helper.make_node("MaxPool", ["r1"], ["p1"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Conv", ["p1", "w2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"], "conv2/Relu"),
              helper.make_node("Transpose", ["r2"], ["nhwc"], "flatten_tr", perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", ["nhwc", "flat"], ["f"], "flatten"),
              helper.make_node("MatMul", ["f", "fc"], ["out"], "dense")]
    return make_model(nodes, inits, [batch, 12, 12, 3], input_name="input_1")


@pytest.mark.parametrize("rescale", [False, True])
def test_nhwc_input_becomes_nchw(rescale):
    proto = _nhwc_model(rescale)
    model = Model.from_proto(proto)
    assert model.input_layout == "NHWC" and model.input_size == (3, 12, 12) and model.input_name == "input_1"
    dims = model.proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["unk__7", 3, 12, 12]
    transposes = [n for n in model.proto.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == (3 if rescale else 1)  # tf2onnx's own Transpose cancels against ours
    x = np.random.default_rng(5).uniform(0, 255, size=(2, 3, 12, 12)).astype(np.float32)
    want = run(proto, {"input_1": x.transpose(0, 2, 3, 1)})["out"]
    np.testing.assert_allclose(run(model.proto, {"input_1": x})["out"], want, rtol=1e-5, atol=1e-4)
    assert [layer.name for layer in model.layers] == ["conv1/Relu", "conv2/Relu"]
    assert [(layer.rf_size, layer.rf_stride, layer.rf_start) for layer in model.layers] == [
        ((3, 3), (1, 1), (-1, -1)), ((8, 8), (2, 2), (-3, -3))]
    f = model.layer("f")  # flattened after the NHWC Transpose: every unit sees the whole image
    assert f.covers_whole_input and f.receptive_field(0, 0) == (0, 0, 12, 12)


def test_preprocess_override_and_validation(tmp_path):
    base = foreign_model()
    model = Model.from_proto(base, preprocess={"scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1],
                                               "channel_order": "BGR"})
    assert model.preprocess["scale"] == 1.0 and model.preprocess["channel_order"] == "BGR"
    assert model.preprocess["crop"] == 21  # keys not given keep the file's (here the defaults)
    spec = tmp_path / "pre.json"
    spec.write_text('{"mean": [103.9, 116.8, 123.7], "std": [1, 1, 1], "scale": 1, "resize": 24}')
    from_file = Model.from_proto(base, preprocess=str(spec))
    assert from_file.preprocess["mean"] == [103.9, 116.8, 123.7] and from_file.preprocess["resize"] == 24
    assert Model.from_proto(base, preprocess='{"std": [0.5, 0.5, 0.5]}').preprocess["std"] == [0.5, 0.5, 0.5]
    for bad, message in [({"std": [0.2, 0, 0.2]}, "std must be positive"),
                         ({"mean": [0, 0]}, "mean must be three finite numbers"),
                         ({"scale": 0}, "scale must be a positive number"),
                         ({"channel_order": "GRB"}, "channel_order must be RGB or BGR"),
                         ({"crop": 20}, "crops 20x20 but its input is 21x21"),
                         ({"resize": 0}, "resize .* must be a positive integer"),
                         ({"interpolation": "cubic"}, "interpolation 'cubic' unknown"),
                         ({"mena": [0, 0, 0]}, "unknown preprocess key mena; known keys: resize"),
                         ("{not json", "not valid JSON"), ("[1, 2]", "neither JSON"),
                         (str(tmp_path / "missing.json"), "neither JSON .* nor a file")]:
        with pytest.raises((InvalidModel, ValueError), match=message):
            Model.from_proto(base, preprocess=bad)


def test_parse_preprocess_is_the_cli_parser(tmp_path):
    from cnnviz_fast._metadata import parse_preprocess

    assert parse_preprocess('{"scale": 1, "crop": [224, 200]}') == {"scale": 1, "crop": [224, 200]}
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object, not list"):
        parse_preprocess(listed)


def test_dynamo_export_runs_at_any_batch(tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 5 * 5, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(tmp_path / "dyn.onnx"), dynamo=True,
                          opset_version=20)
    raw = onnx.load(str(tmp_path / "dyn.onnx"))
    assert any(n.op_type == "Reshape" and any(a.name == "allowzero" and a.i for a in n.attribute)
               for n in raw.graph.node)
    assert raw.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    model = Model.load(tmp_path / "dyn.onnx")
    assert len(model.layers) == 2 and model.opset >= 18
    x = np.random.default_rng(6).normal(size=(5, 3, 16, 16)).astype(np.float32)
    out = next(iter(run(model.proto, {model.input_name: x}).values()))
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_batch_pinned_by_a_node_is_refused_at_load_naming_it():
    """x.view(1, *x.shape[1:]) as an exporter writes it: the target is computed, so it cannot be
    rewritten, and a batch of 2 would fail inside ONNX Runtime."""
    nodes = [helper.make_node("Relu", ["pixels"], ["r"], "relu"),
             helper.make_node("Shape", ["r"], ["s"], "shape"),
             helper.make_node("Slice", ["s", "one", "four"], ["chw"], "chw"),
             helper.make_node("Concat", ["one", "chw"], ["target"], "target", axis=0),
             helper.make_node("Reshape", ["r", "target"], ["out"], "pin")]
    proto = make_model(nodes, [const("one", np.array([1], np.int64)), const("four", np.array([4], np.int64))],
                       [1, 3, 4, 4])
    with pytest.raises(InvalidModel, match=r"node 'pin' \(Reshape\) fixes the batch size to 1.*dynamic batch"):
        Model.from_proto(proto)
