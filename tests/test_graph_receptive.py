"""Receptive fields from the graph equal the support of the true gradient (see Skeleton)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz_fast.graph import UnsupportedOp
from cnnviz_fast.graph import Model
from test_graph_helpers import Skeleton, const, export_torch, make_model, probe_positions

ZOO = ("zfnet", "alexnet", "vgg16")


def _check(model: Model, module: nn.Module, taps) -> int:
    """Compare every layer's clipped box with the gradient support at probe positions."""
    sk = Skeleton(module, taps)
    queries = [(layer.name, y, x) for layer in model.all_layers
               for y, x in probe_positions(*layer.map_shape)]
    got = sk.boxes(model.input_size[1:], queries)
    for (name, y, x), support in zip(queries, got):
        layer = model.layer(name)
        top, left, bottom, right = layer.clip(layer.receptive_field(y, x))
        expected = (top, left, bottom, right) if top < bottom and left < right else None
        assert expected == support, (name, y, x)
    return len(queries)


def _odd_net() -> nn.Sequential:
    """Every geometry knob: asymmetric pad, dilation, ceil_mode with padding, non-square kernels."""
    return nn.Sequential(
        nn.ZeroPad2d((2, 0, 1, 3)), nn.Conv2d(3, 4, (3, 5), stride=(2, 1)), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 5, 3, padding=2, dilation=2), nn.ReLU(),
        nn.AvgPool2d(2, stride=3, ceil_mode=True),
        nn.Conv2d(5, 6, (2, 3), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.MaxPool2d(2, dilation=2),
        nn.Flatten(), nn.Linear(6 * 2 * 1, 7), nn.ReLU(), nn.Linear(7, 3),
    )


def test_odd_geometry_matches_gradient_support():
    torch.manual_seed(0)
    net = _odd_net()
    model = Model.from_proto(export_torch(net, (3, 35, 41)))
    relus = [m for m in net if isinstance(m, nn.ReLU)]
    assert [layer.kind for layer in model.all_layers] == ["conv", "conv", "conv", "fc"]
    assert _check(model, net, zip([layer.name for layer in model.all_layers], relus)) >= 16


def test_known_boxes_of_odd_net():
    model = Model.from_proto(export_torch(_odd_net(), (3, 35, 41)))
    first = model.layers[0]
    # ZeroPad2d((left 2, right 0, top 1, bottom 3)) then a 3x5 kernel with stride (2, 1).
    assert (first.rf_size, first.rf_stride, first.rf_start) == ((3, 5), (2, 1), (-1, -2))
    assert first.receptive_field(1, 1) == (1, -1, 4, 4)
    assert model.all_layers[-1].receptive_field(0, 0) == (0, 0, 35, 41)
    assert model.all_layers[-1].covers_whole_input


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad(auto_pad):
    w = np.ones((2, 3, 4, 4), np.float32)
    m = make_model([_node("Conv", ["pixels", "w"], ["c"], auto_pad=auto_pad, strides=[3, 3]),
                    _node("Relu", ["c"], ["out"])], [const("w", w)], [1, 3, 10, 10])
    layer = Model.from_proto(m).layers[0]
    total = max((-(-10 // 3) - 1) * 3 + 4 - 10, 0)  # 3 at 10 px, stride 3, kernel 4
    lead = {"SAME_UPPER": total // 2, "SAME_LOWER": total - total // 2, "VALID": 0}[auto_pad]
    assert layer.rf_start == (-lead, -lead)
    assert layer.map_shape == ((4, 4) if auto_pad != "VALID" else (3, 3))


def test_rf_through_unknown_op_is_refused_only_for_layers_behind_it():
    w = const("w", np.ones((2, 3, 3, 3), np.float32))
    w2 = const("w2", np.ones((2, 2, 3, 3), np.float32))
    scales = const("scales", np.array([1, 1, 2, 2], np.float32))
    m = make_model([_node("Conv", ["pixels", "w"], ["c1"], name="c1"), _node("Relu", ["c1"], ["r1"], name="relu1"),
                    _node("Resize", ["r1", "", "scales"], ["up"], name="up"),
                    _node("Conv", ["up", "w2"], ["c2"], name="c2"), _node("Relu", ["c2"], ["out"], name="relu2")],
                    [w, w2, scales], [1, 3, 12, 12])
    model = Model.from_proto(m)
    assert [layer.name for layer in model.layers] == ["relu1", "relu2"]
    assert model.layer("relu1").rf_size == (3, 3)
    with pytest.raises(UnsupportedOp, match=r'node "up" \(Resize\).*receptive-field.*relu2'):
        model.layer("relu2").rf_size
    assert model.layer("relu2").map_shape == (18, 18)


@pytest.fixture(scope="module", params=ZOO)
def zoo_pair(request):
    from cnnviz_fast import zoo

    torch.manual_seed(0)
    net = zoo.build(request.param)
    return Model.load(request.param, random_weights=True), net


def test_zoo_fields_match_gradient_support(zoo_pair):
    model, net = zoo_pair
    assert [layer.name for layer in model.all_layers] == [name for name, _ in net.taps()]
    _check(model, net, net.taps())


def test_zfnet_geometry_is_the_papers():
    model = Model.load("zfnet", random_weights=True)
    assert [layer.map_shape for layer in model.layers] == [(110, 110), (26, 26), (13, 13), (13, 13), (13, 13)]
    assert [layer.units for layer in model.all_layers] == [96, 256, 384, 384, 256, 4096, 4096]


def test_demo_fields_match_gradient_support():
    from cnnviz_fast.zoo import train_demo

    model = Model.load("demo")
    side = model.input_size[1]
    net = train_demo.DemoNet(len(model.labels or []) or 10, side)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    _check(model, net, zip([layer.name for layer in model.all_layers], relus))


def _node(op, inputs, outputs, name=None, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name or outputs[0], **attrs)
