"""Graph (DAG) reverse plans in the Projector, against the independent torch oracle
(`cnnviz_fast.testing.oracle`: float64 autograd, only the ReLU-like backward replaced per mode).

Fast: a small net with every multi-input / non-ReLU op family (residual Add, Concat, Split, Slice,
SE gate with HardSigmoid, SiLU, LayerNorm behind a Transpose pair, nearest Resize, Sub, Div,
ReLU6, GELU, Tanh, LeakyRelu, GlobalMaxPool, MaxPool), ResNet-18 and EfficientNet-B0 blocks.
Slow: every family of `cnnviz_fast.testing.families` at its block outputs, all three modes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnviz_fast import Model, Projector
from cnnviz_fast.graph import UnsupportedOp
from cnnviz_fast.testing import MODES, Oracle, assert_close, pick_seeds
from _support.onnx_models import export_torch, run


class Mixed(nn.Module):
    """Every kind of node a graph plan must reverse, on a 3x20x22 input; taps are nn.Identity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2)
        self.se1, self.se2 = nn.Conv2d(10, 3, 1), nn.Conv2d(3, 10, 1)
        self.dw = nn.Conv2d(10, 10, 3, stride=2, padding=1, groups=10)
        self.norm = nn.LayerNorm(10)
        self.up = nn.Conv2d(10, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)
        self.taps = nn.ModuleDict({k: nn.Identity() for k in ("cat", "se", "res", "ln", "up", "gmp")})

    def forward(self, x):
        x = F.relu(self.stem(x))
        cat = self.taps["cat"](torch.cat([F.relu6(self.a(x)), F.gelu(self.b(x))], 1))
        gate = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(cat, 1)))))
        se = self.taps["se"](F.silu(cat * gate))
        lo, hi = torch.split(se, [4, 6], dim=1)
        res = self.taps["res"](torch.cat([hi, torch.tanh(lo)], 1) + se - 0.5 * x[:, :1] / (1 + x[:, 1:2] ** 2))
        y = F.max_pool2d(F.leaky_relu(self.dw(res), 0.1), 2, ceil_mode=True)
        ln = self.taps["ln"](self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        up = self.taps["up"](F.relu(self.up(F.interpolate(ln, scale_factor=2, mode="nearest")))[:, :, 1:, :-1])
        gmp = self.taps["gmp"](F.adaptive_max_pool2d(up, 1).flatten(1))
        return self.fc(gmp)


def _tensor_names(proto: onnx.ModelProto, net: nn.Module, taps: dict, x: np.ndarray) -> dict[str, str]:
    """ONNX tensor of each torch tap, found by value (the exporter drops the Identity probes)."""
    want = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: want.__setitem__(k, o.detach().numpy()))
             for k, m in taps.items()]
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = [t for n in probe.graph.node for t in n.output if n.op_type != "Constant"]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    got = run(probe, {proto.graph.input[0].name: x})
    out = {}
    for k, v in want.items():
        hits = [t for t in names if got[t].shape == v.shape and np.allclose(got[t], v, atol=1e-5)]
        assert hits, k
        out[k] = hits[-1]
    return out


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    net = Mixed().eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 20, 22)).astype(np.float32)
    proto = export_torch(net, (3, 20, 22))
    model = Model.from_proto(proto)
    return model, net, x, _tensor_names(proto, net, dict(net.taps.items()), x)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_ops_equal_the_oracle(mixed, mode):
    model, net, x, names = mixed
    oracle = Oracle(net, dict(net.taps.items()))
    p = Projector(model, device="cpu", mode=mode)
    for tap, tensor in names.items():
        plan = model.reverse_plan(tensor)
        assert not plan.is_chain
        seeds = pick_seeds(oracle.tap(x, tap), 4)
        assert_close(p.project(x, layer=tensor, seeds=seeds), oracle.project(x, seeds, tap, mode))


def test_mixed_plan_shape(mixed):
    model, _, _, names = mixed
    plan = model.reverse_plan(names["gmp"])
    ops = {s.op_type for s in plan.steps}
    assert {"Concat", "Split", "Mul", "Sigmoid", "HardSigmoid", "LayerNormalization", "Transpose", "Resize",
            "Slice", "GlobalMaxPool", "MaxPool", "Clip", "Erf", "Add", "Sub", "Div", "Pow"} <= ops
    parts = plan.partition()
    assert [p.unpool is not None for p in parts] == [True, False]  # one MaxPool: two ORT parts
    assert parts[-1].outputs == (model.input_name,)
    # the image gets the signals of the stem conv and of both slices of x (the Sub / Div terms) summed
    assert plan.forward_tensors("deconvnet") != plan.forward_tensors("guided")


def test_mixed_is_deterministic(mixed):
    model, _, x, names = mixed
    seeds = [(0, 1, 3, 4), (1, 2, 0, 0)]
    a = Projector(model, device="cpu", mode="guided").project(x, layer=names["up"], seeds=seeds)
    b = Projector(model, device="cpu", mode="guided").project(x, layer=names["up"], seeds=seeds)
    assert np.array_equal(a, b)


def test_unsupported_op_blocks_only_its_dependents():
    """A Sin on one branch blocks the layers after it, not those on the other branch."""

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = F.relu(self.c1(x))
            left = F.relu(self.c2(torch.sin(x)))
            right = F.relu(self.c3(x))
            return F.relu(left + right)

    model = Model.from_proto(export_torch(Branches(), (3, 8, 8)))
    names = [layer.name for layer in model.all_layers]
    assert len(names) == 3
    model.reverse_plan(names[2])  # the right branch is fine
    for blocked in (names[1], model.proto.graph.output[0].name):
        with pytest.raises(UnsupportedOp) as info:
            model.reverse_plan(blocked)
        assert info.value.op_type == "Sin" and names[2] not in info.value.layers
        assert names[0] not in info.value.layers and names[1] in info.value.layers


# ---- model families (torchvision / timm, random weights, 64x64) ----------------------------------

BLOCKS = {
    "resnet18": ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"],
    "resnet50": ["layer1.0", "layer1.2", "layer2.3", "layer3.5", "layer4.2"],
    "densenet121": ["features.denseblock1", "features.transition1", "features.denseblock2",
                    "features.transition2", "features.denseblock3", "features.transition3",
                    "features.denseblock4"],
    "googlenet": ["inception3a", "inception3b", "inception4a", "inception4e", "inception5b"],
    "mobilenet_v2": ["features.1", "features.3", "features.6", "features.10", "features.13", "features.17"],
    "mobilenet_v3_small": ["features.1", "features.3", "features.4", "features.6", "features.9", "features.11"],
    "efficientnet_b0": ["blocks.0.0", "blocks.1.1", "blocks.2.1", "blocks.3.2", "blocks.4.2", "blocks.5.3",
                        "blocks.6.0"],
    "convnext_atto": ["stages.0.blocks.1", "stages.1.blocks.1", "stages.2.blocks.5", "stages.3.blocks.1"],
}


def block_tensor(proto: onnx.ModelProto, path: str) -> str:
    """The output of module `path` in a TorchScript export: the last node in its name scope
    (`layer1.0` -> "/layer1/layer1.0/...")."""
    scopes, last = [], ""
    for comp in path.split("."):
        last = f"{last}.{comp}" if comp.isdigit() else comp
        scopes.append(last)
    prefix = "/" + "/".join(scopes) + "/"
    outs = [n.output[0] for n in proto.graph.node if n.name.startswith(prefix)]
    assert outs, path
    return outs[-1]


def _family(name):
    from cnnviz_fast.testing.families import build_family, export_family

    path = export_family(name)
    return Model.load(str(path)), onnx.load(str(path)), build_family(name)


def _flipped_images(fwd, oracle: Oracle, x: np.ndarray) -> set[int]:
    """Images where a ReLU mask of ONNX Runtime's float32 forward differs from the oracle's
    float64 one (a pre-activation within rounding of 0): guided / gradient projections of such an
    image legitimately differ along that unit's path, so its seeds are not compared."""
    bad = set()
    for tensor, value in fwd.values.items():
        parts = tensor.split("/")[1:-1]
        if not tensor.endswith("/Relu_output_0") or not parts:
            continue
        path, last = [], None
        for comp in parts:
            path.append(comp[len(last) + 1:] if last and comp.startswith(last + ".") else comp)
            last = comp
        try:
            ref = oracle.tap(x, ".".join(path))
        except (KeyError, AttributeError, RuntimeError):
            continue  # a functional or reused ReLU: no module of its own to tap
        mine = value.numpy()
        if ref.shape == mine.shape:
            bad |= set(np.flatnonzero(((mine > 0) != (ref > 0)).reshape(len(x), -1).any(1)).tolist())
    return bad


def _check_family(name: str, modes, blocks=None, seeds_per_layer: int = 3):
    model, proto, net = _family(name)
    oracle = Oracle(net)
    x = np.random.default_rng(0).normal(size=(2, *model.input_size)).astype(np.float32)
    for mode in modes:
        p = Projector(model, device="cpu", mode=mode)
        tensors = {b: block_tensor(proto, b) for b in blocks or BLOCKS[name]}
        fwd = p.forward(x, list(tensors.values()))
        skip = _flipped_images(fwd, oracle, x) if mode != "deconvnet" else set()
        for k, (block, tensor) in enumerate(tensors.items()):
            seeds = [s for s in pick_seeds(oracle.tap(x, block), seeds_per_layer, offset=k) if s[0] not in skip]
            assert seeds, (name, block, "no image without a rounding-level ReLU flip")
            assert_close(p.project(fwd, layer=tensor, seeds=seeds), oracle.project(x, seeds, block, mode))


def test_resnet18_blocks_fast():
    _check_family("resnet18", ("deconvnet", "guided"), ["layer1.1", "layer3.0"], seeds_per_layer=2)


def test_efficientnet_se_silu_fast():
    _check_family("efficientnet_b0", ("gradient",), ["blocks.1.1"], seeds_per_layer=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BLOCKS))
def test_family_blocks_equal_the_oracle(name):
    _check_family(name, MODES)


def test_chain_models_keep_chain_plans():
    model = Model.load("zfnet", random_weights=True, seed=0)
    assert all(model.reverse_plan(layer).is_chain for layer in model.all_layers)
