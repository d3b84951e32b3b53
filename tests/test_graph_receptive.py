"""Receptive fields from the graph equal the support of the true gradient (see Skeleton)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz_fast.graph import UnsupportedOp
from cnnviz_fast.graph import Model
from _support.onnx_models import const, export_torch, make_model
from _support.skeleton import Skeleton, probe_positions

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


class _Block(nn.Module):
    """Residual, squeeze-excitation or ConvNeXt-style block after a strided stem conv.

    `surrogate=True` builds the field oracle with the same geometry: positive weights, zero
    biases, identity norms and activations, the SE gate detached (it scales channels; its field is
    not the signal's) — so the gradient is a sum of positive terms over exactly the field.
    """

    def __init__(self, kind: str, surrogate: bool = False):
        super().__init__()
        act = nn.Identity() if surrogate else {"residual": nn.ReLU(), "se": nn.SiLU(), "convnext": nn.GELU()}[kind]
        self.kind, self.surrogate, self.act = kind, surrogate, act
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=(1, 0))
        if kind == "residual":
            self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), act, nn.Conv2d(6, 8, 3, stride=2, padding=1))
            self.skip = nn.Conv2d(6, 8, 1, stride=2)
        elif kind == "se":
            self.body = nn.Sequential(nn.Conv2d(6, 6, 5, padding=2, groups=6), act)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 3, 1), act, nn.Conv2d(3, 6, 1), nn.Sigmoid())
            self.tail = nn.Conv2d(6, 8, 3, padding=1)
        else:
            self.dw = nn.Conv2d(6, 6, 7, padding=3, groups=6)
            self.norm = nn.Identity() if surrogate else nn.LayerNorm(6)
            self.mlp = nn.Sequential(nn.Linear(6, 12), act, nn.Linear(12, 6))
        if surrogate:
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(p.abs() + 0.1 if p.dim() > 1 else torch.zeros_like(p))
        self.out = None

    def forward(self, x):
        x = self.stem(x)
        if self.kind == "residual":
            y = self.act(self.body(x) + self.skip(x))
        elif self.kind == "se":
            h = self.body(x)
            g = self.gate(h)
            y = self.tail(h * (g.detach() if self.surrogate else g))
        else:
            h = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            y = x + h
        self.out = y
        return y.mean((2, 3)) if not self.surrogate else y


def _support(net: nn.Module, hw, positions):
    """Bounding box of the gradient support of the block output at each (y, x) (channel 0)."""
    x = torch.ones(len(positions), 3, *hw, dtype=torch.float64, requires_grad=True)
    net.double()(x)
    seed = torch.zeros_like(net.out)
    for b, (y, xx) in enumerate(positions):
        seed[b, 0, y, xx] = 1.0
    (grad,) = torch.autograd.grad(net.out, x, grad_outputs=seed)
    boxes = []
    for g in grad.abs().sum(1) > 0:
        rows, cols = torch.nonzero(g.any(1)).ravel(), torch.nonzero(g.any(0)).ravel()
        boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


@pytest.mark.parametrize("kind", ["residual", "se", "convnext"])
def test_block_fields_match_gradient_support(kind):
    torch.manual_seed(0)
    hw = (23, 25)  # the stem's windows tile the width: a field is an interval, cut only by the image
    proto = export_torch(_Block(kind), (3, *hw))
    ops = {n.op_type for n in proto.graph.node}
    assert {"residual": {"Add"}, "se": {"GlobalAveragePool", "Sigmoid", "Mul"},
            "convnext": {"Transpose", "LayerNormalization", "MatMul"}}[kind] <= ops
    model = Model.from_proto(proto)
    block_out = [n.input[0] for n in proto.graph.node if n.op_type == "ReduceMean"][-1]  # y.mean((2, 3))
    layer = model.layer(block_out)
    assert not layer.covers_whole_input
    pts = probe_positions(*layer.map_shape)
    want = _support(_Block(kind, surrogate=True), hw, pts)
    got = [layer.clip(layer.receptive_field(y, x)) for y, x in pts]
    assert got == want


def test_shufflenet_fields_through_split_and_channel_shuffle():
    """ShuffleNetV2: x.chunk(2, dim=1) (Slice over channels) and the channel shuffle (Reshape to
    5-D, Transpose, Reshape back) keep the field. Oracle: the same net made linear and positive
    (max-pools as average pools over the same windows), gradient support per block output."""
    import copy

    torchvision = pytest.importorskip("torchvision")
    from _support.skeleton import probe_positions as probes

    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    hw = (64, 64)
    model = Model.from_torch(net, (3, *hw))
    assert {"Slice", "Transpose", "Concat"} <= {n.op_type for n in model.proto.graph.node}
    sur = copy.deepcopy(net).double()
    with torch.no_grad():
        for parent in list(sur.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.BatchNorm2d, nn.ReLU)):
                    setattr(parent, name, nn.Identity())
                elif isinstance(child, nn.MaxPool2d):
                    setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
                elif isinstance(child, nn.Conv2d):
                    child.weight.copy_(child.weight.abs() + 0.01)
                    if child.bias is not None:
                        child.bias.zero_()
    checked = 0
    for layer in model.layers[:6]:
        outs = {}
        hook = sur.get_submodule(layer.name).register_forward_hook(lambda m, i, o: outs.setdefault("y", o))
        pts = probes(*layer.map_shape)
        x = torch.ones(len(pts), 3, *hw, dtype=torch.float64, requires_grad=True)
        sur(x)
        hook.remove()
        seed = torch.zeros_like(outs["y"])
        for b, (y, xx) in enumerate(pts):
            seed[b, :, y, xx] = 1.0  # a layer's field is that of its widest channel (here the branch's)
        (grad,) = torch.autograd.grad(outs["y"], x, grad_outputs=seed)
        for b, (y, xx) in enumerate(pts):
            g = grad[b].abs().sum(0) > 0
            rows, cols = torch.nonzero(g.any(1)).ravel(), torch.nonzero(g.any(0)).ravel()
            want = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
            assert layer.clip(layer.receptive_field(y, xx)) == want, (layer.name, y, xx)
            checked += 1
    assert checked >= 20
