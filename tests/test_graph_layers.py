"""Default layers: the blocks of each CNN family by their module names, every activation for
"all", the activation after each Conv for chains, and the names of hand-built graphs.

Each pinned default layer is also checked against torch: its ONNX tensor equals the output of
the module of that name (a forward hook on the original net).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from cnnviz_fast.graph import Model
from cnnviz_fast.testing.families import build_family, export_family
from _support.onnx_models import const, export_torch, make_model, run

pytest.importorskip("torchvision", reason="the family models come from torchvision and timm")
pytest.importorskip("timm", reason="the family models come from torchvision and timm")


def _blocks(prefix, counts):
    return [f"{prefix}{s + 1}.{b}" for s, n in enumerate(counts) for b in range(n)]


DEFAULTS = {
    "resnet18": ["conv1"] + _blocks("layer", [2, 2, 2, 2]),
    "resnet50": ["conv1"] + _blocks("layer", [3, 4, 6, 3]),
    "densenet121": ["features.conv0"] + [f"features.{kind}{i}" for i in range(1, 5)
                                         for kind in ("denseblock", "transition") if (kind, i) != ("transition", 4)],
    "googlenet": ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                  "inception4c", "inception4d", "inception4e", "inception5a", "inception5b"],
    "mobilenet_v2": [f"features.{i}" for i in range(19)],
    "mobilenet_v3_small": [f"features.{i}" for i in range(13)],
    "efficientnet_b0": ["conv_stem"] + [f"blocks.{s}.{b}" for s, n in enumerate([1, 2, 2, 3, 3, 4, 1])
                                        for b in range(n)] + ["conv_head"],
    "convnext_atto": ["stem"] + [name for s, n in enumerate([2, 2, 6, 2])
                                 for name in ([f"stages.{s}.downsample"] if s else [])
                                 + [f"stages.{s}.blocks.{b}" for b in range(n)]],
}

# Layers whose tensor is the output of a differently named module: a stem's activation module.
HOOKED = {"resnet18": {"conv1": "relu"}, "resnet50": {"conv1": "relu"},
          "densenet121": {"features.conv0": "features.relu0"},
          "efficientnet_b0": {"conv_stem": "bn1", "conv_head": "bn2"}}


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "families"


@pytest.mark.parametrize("family", list(DEFAULTS))
def test_family_default_layers_are_the_blocks(family, family_dir):
    model = Model.load(export_family(family, cache_dir=family_dir))
    assert [layer.name for layer in model.layers] == DEFAULTS[family]
    assert model.taps() == model.layers and all(layer in model.all_layers for layer in model.layers)
    assert all(layer.kind == "conv" and len(layer.map_shape) == 2 for layer in model.layers)

    net = build_family(family)
    x = np.random.default_rng(0).normal(size=(2, *model.input_size)).astype(np.float32)
    want = {}

    def keep(name):
        def hook(module, inputs, output):
            want.setdefault(name, output.detach().numpy().copy())  # first call; returns None
        return hook

    hooks = [net.get_submodule(HOOKED.get(family, {}).get(layer.name, layer.name)).register_forward_hook(
        keep(layer.name)) for layer in model.layers]
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    got = run(model.mining_graph(model.layers, heads="native"), {model.input_name: x})
    for layer in model.layers:
        ref = want[layer.name]
        assert got[layer.tensor].shape == ref.shape == (2, layer.units, *layer.map_shape), layer.name
        scale = np.abs(ref).max()
        assert np.abs(got[layer.tensor] - ref).max() <= 1e-4 * scale, layer.name


@pytest.mark.parametrize("family, op, count", [("resnet18", "Relu", 17), ("mobilenet_v3_small", "HardSwish", None),
                                               ("efficientnet_b0", "SiLU", 49), ("convnext_atto", "GELU", 12)])
def test_all_layers_hold_every_activation(family, op, count, family_dir):
    model = Model.load(export_family(family, cache_dir=family_dir))
    tensors = {layer.tensor for layer in model.all_layers}
    nodes = model.proto.graph.node
    if op in ("Relu", "HardSwish"):
        outs = [n.output[0] for n in nodes if n.op_type == op]
    elif op == "SiLU":  # Mul(x, Sigmoid(x))
        sig = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Sigmoid"}
        outs = [n.output[0] for n in nodes if n.op_type == "Mul" and len(n.input) == 2
                and sig.get(n.input[1]) == n.input[0]]
    else:  # GELU as exported: x * (1 + erf(x / sqrt 2)), then * 0.5
        outs = [n.output[0] for n in nodes if n.name.endswith("/act/Mul_1")]
    assert outs and (count is None or len(outs) == count)
    assert set(outs) <= tensors
    order = [model.proto.graph.node[model._index.producer[layer.tensor]].name for layer in model.all_layers]
    assert order == sorted(order, key=[n.name for n in nodes].index)  # forward order
    if family == "resnet18":
        assert len(model.all_layers) == 17
        assert model.layer("layer1.0.relu").tensor == "/layer1/layer1.0/relu/Relu_output_0"


def test_chain_with_other_activations_taps_them_after_each_conv():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 5, 3), nn.Hardswish(),
                        nn.Conv2d(5, 6, 3), nn.GELU(), nn.Conv2d(6, 7, 3), nn.ReLU(), nn.MaxPool2d(2))
    model = Model.from_proto(export_torch(net, (3, 16, 16)))
    ops = [model.proto.graph.node[model._index.producer[layer.tensor]].op_type for layer in model.layers]
    assert ops == ["Mul", "HardSwish", "Mul", "Relu"]
    assert [layer.units for layer in model.layers] == [4, 5, 6, 7]
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    got = run(model.mining_graph(model.layers, heads="native"), {model.input_name: x})
    with torch.no_grad():
        ref = net[:6](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got[model.layers[2].tensor], ref, rtol=1e-5, atol=1e-5)


def _residual_graph(named: bool):
    """stem conv -> relu -> [conv -> relu -> conv] + skip -> relu -> conv -> relu, with onnx.helper."""
    rng = np.random.default_rng(0)
    w = {k: const(k, rng.normal(size=s).astype(np.float32)) for k, s in
         (("w0", (4, 3, 3, 3)), ("w1", (4, 4, 3, 3)), ("w2", (4, 4, 3, 3)), ("w3", (5, 4, 1, 1)))}
    pad = {"pads": [1, 1, 1, 1]}
    nm = (lambda s: s) if named else (lambda s: "")
    nodes = [helper.make_node("Conv", ["pixels", "w0"], ["c0"], nm("stem"), **pad),
             helper.make_node("Relu", ["c0"], ["r0"], nm("stem_relu")),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], nm("b_conv1"), **pad),
             helper.make_node("Relu", ["c1"], ["r1"], nm("b_relu1")),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], nm("b_conv2"), **pad),
             helper.make_node("Add", ["c2", "r0"], ["s"], nm("b_add")),
             helper.make_node("Relu", ["s"], ["r2"], nm("b_out")),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], nm("head")),
             helper.make_node("Relu", ["c3"], ["out"], nm("head_relu"))]
    return make_model(nodes, list(w.values()), ["N", 3, 9, 9])


@pytest.mark.parametrize("named", [True, False])
def test_hand_built_residual_graph(named):
    model = Model.from_proto(_residual_graph(named))
    assert [layer.tensor for layer in model.layers] == ["r0", "r2", "out"]
    assert [layer.name for layer in model.layers] == (["stem_relu", "b_out", "head_relu"] if named
                                                      else ["r0", "r2", "out"])
    assert [layer.tensor for layer in model.all_layers] == ["r0", "r1", "r2", "out"]
    assert model.layers[1].rf_size == (7, 7) and model.layers[1].rf_start == (-3, -3)


def test_layer_candidates_name_tensors_after_a_conv():
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c"], "conv"),
             helper.make_node("MaxPool", ["c"], ["out"], "pool", kernel_shape=[2, 2])]
    model = Model.from_proto(make_model(nodes, [const("w", np.ones((2, 3, 3, 3), np.float32))], [1, 3, 8, 8]))
    assert model.layers == []
    assert model.layer_candidates() == ["c", "out"]
    assert "candidate tensors: c, out" in model.no_layers_message()
