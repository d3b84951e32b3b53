"""Reverse plans: structure, exact adjoints of the linear steps, projections equal to an autograd
deconvnet (torch, ReLU backward replaced per mode, LRN skipped), and UnsupportedOp."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from cnnviz_fast.graph import ConvT, Identity, Relu, UnsupportedOp, Unpool
from cnnviz_fast.graph import Model
from cnnviz_fast.testing import Oracle
from _support.onnx_models import const, export_torch, foreign_model, make_model, run
from _support.plans import apply_plan, run_plan

MODES = ("deconvnet", "guided", "gradient")


def oracle(net: nn.Module, tap: nn.Module, x: np.ndarray, seeds, mode: str) -> np.ndarray:
    """The package's torch oracle (float64 autograd, ReLU backward per mode, LRN skipped) at
    module `tap`'s output."""
    return Oracle(net, {"tap": tap}).project(x, seeds, "tap", mode)


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    scale = np.abs(want).reshape(len(want), -1).max(1)
    assert np.all(scale > 0)
    err = np.abs(got - want).reshape(len(want), -1).max(1)
    assert np.all(err <= rtol * scale), err / scale


def _seeds(model: Model, layer, x: np.ndarray) -> list[tuple]:
    """Corner, far corner and centre seeds (fc: the unit itself), each at the channel that fires
    most there, alternating over the images (a seed on a zero activation projects to zero)."""
    tap = run(model.mining_graph([layer], heads="native"), {model.input_name: x})[layer.tensor]
    h, w = layer.map_shape
    pos = [(0, 0), (h - 1, w - 1), (h // 2, w // 2)] if layer.kind == "conv" else [()]
    seeds = []
    for k, p in enumerate(pos * 2):
        for n in [(k + i) % len(x) for i in range(len(x))]:
            values = tap[(n, slice(None), *p)]
            if values.max() > 0:
                seeds.append((n, int(np.argmax(values)), *p))
                break
    assert len(seeds) >= len(pos)
    return seeds


def _small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(6, 8, 3, dilation=2, padding=1), nn.ReLU(),
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(), nn.Dropout(), nn.Linear(12, 10), nn.ReLU(),
    )


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = _small_net()
    for m in net.modules():  # biases away from zero so that ReLU masks matter
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(m.bias, -0.3, 0.3)
    model = Model.from_proto(export_torch(net, (3, 29, 31)))
    relus = [m for m in net if isinstance(m, nn.ReLU)]
    assert len(model.all_layers) == len(relus)
    return model, net, dict(zip([layer.name for layer in model.all_layers], relus))


@pytest.mark.parametrize("mode", MODES)
def test_small_net_projection_equals_autograd(small, mode):
    model, net, taps = small
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 29, 31)).astype(np.float32)
    for layer in model.all_layers:
        seeds = _seeds(model, layer, x)
        assert_close(run_plan(model, layer, x, seeds, mode), oracle(net, taps[layer.name], x, seeds, mode))


def test_plan_structure_and_segments(small):
    model, _, _ = small
    plan = model.reverse_plan(model.all_layers[-1])
    kinds = [type(s).__name__ for s in plan.steps]
    # (the exporter drops Dropout in eval mode)
    assert kinds == ["Relu", "GemmT", "Relu", "GemmT", "Reshape", "Unpool", "Relu", "ConvT",
                     "AvgPoolT", "Relu", "ConvT", "PadCrop", "Unpool", "Relu", "ConvT"]
    assert plan.steps[-1].out_shape == (3, 29, 31) and plan.steps[0].in_shape == (10,)
    pools = [s for s in plan.steps if isinstance(s, Unpool)]
    assert (pools[1].kernel, pools[1].strides, pools[1].pads, pools[1].ceil_mode) == ((3, 3), (2, 2), (1, 1, 1, 1), True)
    assert plan.switch_tensors == [p.input_tensor for p in pools]
    assert plan.forward_outputs[0] == plan.layer.tensor and set(plan.relu_tensors) <= set(plan.forward_outputs)
    for mode in MODES:
        segs = plan.segments(mode)
        assert [getattr(s, "native", None) for s in segs] == [False, True, False, True, False]
        masks = [m for s in segs if not s.native for m in s.mask_inputs]
        assert len(masks) == (0 if mode == "deconvnet" else 5)
    outputs = [o.name for o in model.projection_graph(plan.layer).graph.output]
    assert outputs == plan.forward_outputs


def _chain():
    """Every linear op the plan reverses, in one chain tapped at the raw output tensor "out"."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    nodes = [
        helper.make_node("BatchNormalization", ["pixels", "s", "b", "m", "v"], ["bn"], "bn"),
        helper.make_node("Mul", ["bn", "k"], ["mul"], "mul"),
        helper.make_node("Sub", ["two", "mul"], ["sub"], "sub"),
        helper.make_node("Conv", ["sub", "w1"], ["c1"], "conv1", pads=[2, 0, 1, 1], dilations=[1, 2]),
        helper.make_node("AveragePool", ["c1"], ["a1"], "avg1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        helper.make_node("Pad", ["a1", "pads"], ["p"], "pad"),
        helper.make_node("Conv", ["p", "w2"], ["c2"], "conv2", group=2, strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("AveragePool", ["c2"], ["a2"], "avg2", kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                         ceil_mode=1, count_include_pad=0),
        helper.make_node("Div", ["a2", "two"], ["d"], "div"),
        helper.make_node("Add", ["d", "bias4"], ["e"], "bias"),
        helper.make_node("Identity", ["e"], ["i"], "identity"),
        helper.make_node("Dropout", ["i"], ["dr"], "dropout"),
        helper.make_node("Flatten", ["dr"], ["f"], "flatten"),
        helper.make_node("MatMul", ["f", "mm"], ["g"], "matmul"),
        helper.make_node("Gemm", ["g", "gw"], ["out"], "gemm", alpha=0.7),
    ]
    inits = [const("s", r(3)), const("b", r(3)), const("m", r(3)), const("v", r(3)), const("k", r(1, 3, 1, 1)),
             const("two", np.float32(2.0)), const("w1", r(4, 3, 3, 3) - 1), const("w2", r(6, 2, 3, 3) - 1),
             const("pads", np.array([0, 0, -1, 0, 0, 0, 0, 2], np.int64)), const("bias4", r(6, 1, 1)),
             const("mm", r(6 * 5 * 6, 7) - 1), const("gw", r(7, 5) - 1)]
    return make_model(nodes, inits, ["N", 3, 17, 19])


def _global():
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["gap"], "gap"),
             helper.make_node("Squeeze", ["gap", "axes"], ["sq"], "squeeze"),
             helper.make_node("Unsqueeze", ["sq", "axes"], ["un"], "unsqueeze"),
             helper.make_node("Reshape", ["un", "shape"], ["out"], "reshape")]
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    return make_model(nodes, [const("w", w), const("axes", np.array([2, 3], np.int64)),
                              const("shape", np.array([0, -1], np.int64))], ["N", 3, 9, 8])


@pytest.mark.parametrize("build", [_chain, _global])
def test_linear_steps_are_exact_adjoints(build):
    """<L x, y> = <x, Lᵀ y> with L x = f(x) - f(0) from ORT and Lᵀ the plan (no ReLU, no pool)."""
    model = Model.from_proto(build())
    plan = model.reverse_plan("out")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, *model.input_size)).astype(np.float32)
    f = run(model.proto, {"pixels": np.concatenate([x, np.zeros_like(x[:1])])})["out"]
    lx = f[:3] - f[3:]
    y = rng.normal(size=lx.shape).astype(np.float32)
    lty = apply_plan(plan, y, {}, [0, 1, 2], "gradient")
    lhs = (lx * y).reshape(3, -1).sum(1)
    rhs = (x * lty).reshape(3, -1).sum(1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def _foreign_torch(proto):
    """The foreign model rebuilt in torch from its (unfolded) ONNX weights."""
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}

    def bn(prefix, c, eps):
        m = nn.BatchNorm2d(c, eps=eps).eval()
        m.weight.data, m.bias.data = w[f"{prefix}_scale"], w[f"{prefix}_b"]
        m.running_mean, m.running_var = w[f"{prefix}_mean"], w[f"{prefix}_var"]
        return m

    conv1 = nn.Conv2d(3, 6, 3, padding=1)
    conv1.weight.data, conv1.bias.data = w["w1"], w["b1"]
    conv2 = nn.Conv2d(6, 8, 3, stride=2, bias=False)
    conv2.weight.data = w["w2"]
    fc1, fc2 = nn.Linear(240, 16), nn.Linear(16, 5)
    fc1.weight.data, fc1.bias.data = w["fc1_w"], w["fc1_b"]
    fc2.weight.data, fc2.bias.data = 0.5 * w["fc2_w"].T, w["fc2_b"]
    relus = [nn.ReLU() for _ in range(3)]

    class Net(nn.Module):
        # Every part is a submodule read through self, so the oracle's copy (and its float64
        # conversion) is the network that runs.
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn("bn1", 6, 1e-3), conv2, bn("bn2", 8, 1e-5)
            self.fc1, self.fc2, self.relus = fc1, fc2, nn.ModuleList(relus)

        def forward(self, x):
            x = self.relus[0](self.bn1(self.conv1(x)))
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-np.inf), 3, 2, ceil_mode=True)
            x = self.relus[1](self.bn2(self.conv2(F.pad(x, (0, 1, 2, 0)))))
            return self.fc2(self.relus[2](self.fc1(x.flatten(1))))

    net = Net()
    return net, relus


@pytest.mark.parametrize("mode", MODES)
def test_foreign_model_plans_and_projects(mode):
    proto = foreign_model()
    model = Model.from_proto(proto)
    net, relus = _foreign_torch(proto)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 21, 21)).astype(np.float32)
    for layer, relu in zip(model.all_layers, relus):
        seeds = _seeds(model, layer, x)
        assert_close(run_plan(model, layer, x, seeds, mode), oracle(net, relu, x, seeds, mode))


@pytest.mark.parametrize("op", ["Sin", "Softmax"])
def test_unsupported_op_names_node_and_blocked_layers(op):
    model = Model.from_proto(foreign_model(op))
    assert [type(s) for s in model.reverse_plan("act1").steps] == [Relu, ConvT]
    node = f"/features/{op}"
    message = (f'node "{node}" ({op}) is not supported by the deconvnet reverse plan (no adjoint for '
               "this op); it blocks layers relu2_out, fc_act (mining still works for every layer)")
    for name in ("relu2_out", "fc_act"):
        with pytest.raises(UnsupportedOp) as info:
            model.reverse_plan(name)
        assert str(info.value) == message
        assert (info.value.node, info.value.op_type, info.value.layers) == (node, op, ["relu2_out", "fc_act"])


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_sigmoid_and_tanh_take_their_true_adjoint(op):
    """Once refused, now a graph plan: the elementwise op's derivative at the forward values."""
    model = Model.from_proto(foreign_model(op))
    plan = model.reverse_plan("relu2_out")
    assert [s.op_type for s in plan.steps][:3] == ["Relu", "Conv", "Pad"] and not plan.is_chain
    squash = next(s for s in plan.steps if s.op_type == op)
    assert squash.forward == squash.outputs[:1]  # both derivatives read the forward output
    assert squash.forward[0] in plan.forward_tensors("deconvnet")


@pytest.mark.parametrize("mode", MODES)
def test_residual_add_sums_both_branches(mode):
    """Add(relu(conv(x)), x): the image receives the conv branch's signal plus the skip's."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu1"),
             helper.make_node("Add", ["r", "pixels"], ["res"], "residual"),
             helper.make_node("Relu", ["res"], ["out"], "relu2")]
    model = Model.from_proto(make_model(nodes, [const("w", w)], ["N", 3, 6, 6]))
    plan = model.reverse_plan("out")
    assert [a.step.op_type for a in plan.adjoints] == ["Relu", "Add", "Relu", "Conv"]
    assert plan.adjoints[1].inputs == ("r", "pixels")
    assert model.layer("out").rf_size == (3, 3)  # the union of the two branches' fields

    class Net(nn.Module):
        def forward(self, x):
            return F.relu(F.relu(F.conv2d(x, torch.from_numpy(w).to(x.dtype), padding=1)) + x)

    from cnnviz_fast import Projector

    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    net = Net()
    seeds = _seeds(model, model.layer("out"), x)
    got = Projector(model, device="cpu", mode=mode).project(x, layer="out", seeds=seeds)
    assert_close(got, Oracle(net, {"out": net}).project(x, seeds, "out", mode))


def test_zfnet_projection_equals_autograd():
    """ZFNet (LRN skipped, ceil-mode pools) at two layers, deconvnet mode, random weights."""
    from cnnviz_fast import zoo

    torch.manual_seed(0)
    net = zoo.build("zfnet")
    model = Model.load("zfnet", random_weights=True, seed=0)
    taps = dict(net.taps())
    plan = model.reverse_plan("conv3")
    assert [type(s) for s in plan.steps].count(Identity) == 2  # the two LRNs
    x = np.random.default_rng(4).normal(size=(1, 3, 224, 224)).astype(np.float32)
    for name in ("conv2", "conv3"):
        seeds = _seeds(model, model.layer(name), x)
        assert_close(run_plan(model, name, x, seeds), oracle(net, taps[name], x, seeds, "deconvnet"))
