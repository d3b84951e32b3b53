"""The torch deconvnet oracle (cnnviz_fast.testing.oracle) against independent computations: plain
autograd where no ReLU rule applies, a module-backward-hook deconvnet on torchvision's ResNet-18, a
straight-through tensor-hook deconvnet for every ReLU spelling, PyTorch's forward for the taps."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnviz_fast.testing import MODES, Oracle, assert_close, onnx_oracle, pick_seeds
from _support.onnx_models import const, export_torch, make_model, run

torchvision = pytest.importorskip("torchvision")


class _Stop(Exception):
    pass


def _plain_grad(net: nn.Module, tap: str, x: np.ndarray, seeds) -> np.ndarray:
    """Float64 autograd of the seeded tap with every op's true backward."""
    net = copy.deepcopy(net).double().eval()
    xs = torch.from_numpy(x[[s[0] for s in seeds]].astype(np.float64)).requires_grad_()
    got = {}

    def hook(module, inputs, output):
        got["out"] = output
        raise _Stop  # an in-place op after the tap (ResNet's stem ReLU after bn1) would rewrite it

    handle = net.get_submodule(tap).register_forward_hook(hook)
    try:
        net(xs)
    except _Stop:
        pass
    handle.remove()
    out = got["out"]
    signal = torch.zeros_like(out)
    for k, (_, *rest) in enumerate(seeds):
        signal[(k, *rest)] = out[(k, *rest)].detach()
    (grad,) = torch.autograd.grad(out, xs, signal)
    return grad.numpy()


def _hook_deconvnet(net: nn.Module, tap: str, x: np.ndarray, seeds, mode: str) -> np.ndarray:
    """The mode's rule by nn.ReLU backward hooks (Captum's way): with grad_input = g·[x > 0],
    deconvnet gives relu(g), guided relu(grad_input), gradient grad_input. Needs out-of-place ReLUs."""
    net = copy.deepcopy(net)
    rule = {"deconvnet": lambda gi, go: F.relu(go), "guided": lambda gi, go: F.relu(gi),
            "gradient": lambda gi, go: gi}[mode]
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
            m.register_full_backward_hook(lambda m, gi, go: (rule(gi[0], go[0]),))
    return _plain_grad(net, tap, x, seeds)


class _SEish(nn.Module):
    """Ops that keep their true backward: SiLU, GELU, HardSwish, Sigmoid SE gate, LayerNorm over
    channels (channels-last), GroupNorm, Hardtanh(-1, 1), clamp with min -1, MaxPool, AvgPool."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2)
        self.gate = nn.Conv2d(8, 8, 1)
        self.ln, self.gn = nn.LayerNorm(8), nn.GroupNorm(2, 8)
        self.out = nn.Identity()

    def forward(self, x):
        x = F.silu(self.conv1(x))
        x = F.max_pool2d(F.gelu(x), 2)
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.hardswish(self.gn(self.conv2(x)))
        x = F.hardtanh(x) + x.clamp(min=-1.0)
        return self.out(F.avg_pool2d(x, 2, ceil_mode=True))


def test_no_relu_means_every_mode_is_plain_autograd():
    torch.manual_seed(0)
    net = _SEish()
    x = np.random.default_rng(0).normal(size=(2, 3, 20, 22)).astype(np.float32)
    oracle = Oracle(net)
    seeds = [(0, 1, 0, 0), (1, 5, 1, 2), (0, 7, 1, 0)]
    want = _plain_grad(net, "out", x, seeds)
    for mode in MODES:
        got = oracle.project(x, seeds, "out", mode)
        assert oracle.replaced_calls == {"relu": 0, "lrn": 0}
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert np.abs(want).max() > 0


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    for m in net.modules():  # BN statistics away from (0, 1), so that ReLU masks are not half-half
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    return net, Oracle(net), x


def test_resnet18_tap_equals_the_module_output_and_the_copy_is_private(resnet18):
    net, oracle, x = resnet18
    got = {}
    ref = copy.deepcopy(net).double()
    ref.layer2[1].register_forward_hook(lambda m, i, o: got.setdefault("out", o))
    with torch.no_grad():
        ref(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_allclose(oracle.tap(x, "layer2.1"), got["out"].numpy(), rtol=1e-12, atol=1e-12)
    assert next(net.parameters()).dtype == torch.float32  # the caller's module is left as it was


@pytest.mark.parametrize("mode", MODES)
def test_resnet18_rule_equals_relu_backward_hooks(resnet18, mode):
    net, oracle, x = resnet18
    seeds = pick_seeds(oracle.tap(x, "layer2.1"), 4)
    got = oracle.project(x, seeds, "layer2.1", mode)
    # the stem ReLU and two per BasicBlock (one module, `self.relu`, called twice, in place)
    assert oracle.replaced_calls["relu"] == 1 + 2 * 4
    assert_close(got, _hook_deconvnet(net, "layer2.1", x, seeds, mode), rtol=1e-10)
    if mode == "gradient":
        assert_close(got, _plain_grad(net, "layer2.1", x, seeds), rtol=1e-10)


def test_resnet18_modes_differ_exactly_where_a_relu_is_crossed(resnet18):
    net, oracle, x = resnet18
    bn_seeds = [(0, 3, 5, 7), (1, 60, 31, 0)]
    for tap, seeds, calls in (("bn1", bn_seeds, 0), ("relu", pick_seeds(oracle.tap(x, "relu"), 3), 1)):
        got = {mode: oracle.project(x, seeds, tap, mode) for mode in MODES}
        assert oracle.replaced_calls["relu"] == calls
        # Before the first ReLU, or at it with a positive seed, every rule is the true gradient.
        for mode in MODES:
            np.testing.assert_allclose(got[mode], _plain_grad(net, tap, x, seeds), rtol=1e-12, atol=1e-15)
    seeds = pick_seeds(oracle.tap(x, "layer1.0"), 3)
    got = {mode: oracle.project(x, seeds, "layer1.0", mode) for mode in MODES}
    for a, b in (("deconvnet", "gradient"), ("guided", "gradient"), ("deconvnet", "guided")):
        for k in range(len(seeds)):
            assert not np.allclose(got[a][k], got[b][k]), (a, b, k)


class _Spellings(nn.Module):
    """Every ReLU spelling the oracle must catch, with one in-place ReLU module used twice."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 6, 3, padding=1) for c in (3, 6, 6, 6, 6, 6, 6))
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6(inplace=True)
        self.out = nn.Identity()
        self.reference = None  # a mode: every ReLU-like op becomes a straight-through tensor hook

    def _act(self, spelling: str, x):
        if self.reference is None:
            if spelling == "relu_":
                x.relu_()  # the return value is dropped: the write into x must happen
                return x
            return {"module": self.relu, "F.relu": F.relu, "torch.relu": torch.relu,
                    "relu6": self.relu6, "F.relu6": lambda t: F.relu6(t, inplace=True),
                    "clamp": lambda t: t.clamp(min=0)}[spelling](x)
        upper = 6.0 if "relu6" in spelling else None
        y = x.clamp(0, upper)
        mask = (y > 0) & (y < (upper or np.inf))
        rule = {"deconvnet": lambda g: g.clamp_min(0), "guided": lambda g: g.clamp_min(0) * mask,
                "gradient": lambda g: g * mask}[self.reference]
        y = x + (y - x).detach()  # the forward value of y, the identity backward, then the rule
        y.register_hook(rule)
        return y

    def forward(self, x):
        spellings = ("module", "F.relu", "module", "relu_", "relu6", "F.relu6", "clamp")
        for conv, spelling in zip(self.convs, spellings):
            x = self._act(spelling, 3 * conv(x))  # x3: some values pass ReLU6's upper bound
        return self.out(x)


@pytest.mark.parametrize("mode", MODES)
def test_every_relu_spelling_and_a_reused_inplace_module(mode):
    torch.manual_seed(0)
    net = _Spellings()
    x = np.random.default_rng(2).normal(size=(2, 3, 9, 8)).astype(np.float32)
    oracle = Oracle(net)
    tap = oracle.tap(x, "out")
    seeds = pick_seeds(tap, 5)
    got = oracle.project(x, seeds, "out", mode)
    assert oracle.replaced_calls == {"relu": 7, "lrn": 0}
    with torch.no_grad():
        plain = copy.deepcopy(net).double()(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_allclose(tap, plain.numpy(), rtol=1e-12)
    assert (tap >= 6).any() and (tap == 0).any()  # both bounds are crossed
    net.reference = mode
    assert_close(got, _plain_grad(net, "out", x, seeds), rtol=1e-10)


def test_relu6_upper_bound_is_part_of_the_mask():
    x = np.array([[[[-1.0, 2.0, 7.0]]]], np.float32)
    net = nn.Sequential(nn.Identity(), nn.ReLU6())
    oracle = Oracle(net)
    got = {mode: oracle.project(np.repeat(x, 3, 0), [(0, 0, 0, 0), (1, 0, 0, 1), (2, 0, 0, 2)], "1", mode)
           for mode in MODES}
    # Seeds are the activation values (0, 2, 6): only the middle one is inside (0, 6).
    assert got["gradient"].ravel().tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0]
    assert got["guided"].ravel().tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0]
    assert got["deconvnet"].ravel().tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 6]


def test_maxpool_routes_to_the_first_maximum_in_row_major_order():
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[0, 0, 1, 1] = 1.0  # three tied maxima
    oracle = Oracle(nn.Sequential(nn.MaxPool2d(2)))
    for mode in MODES:
        got = oracle.project(x, [(0, 0, 0, 0)], "0", mode)
        assert got.ravel().tolist() == [0, 1, 0, 0]


def test_lrn_takes_the_identity_backward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 7, 3), nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=1.0))
    x = np.random.default_rng(3).normal(size=(1, 3, 6, 6)).astype(np.float32)
    seeds = [(0, 2, 1, 3)]
    skip, true = Oracle(net), Oracle(net, lrn_identity=False)
    got = skip.project(x, seeds, "1", "deconvnet")
    assert skip.replaced_calls == {"relu": 0, "lrn": 1}
    signal = torch.zeros(1, 7, 4, 4, dtype=torch.float64)
    signal[0, 2, 1, 3] = float(skip.tap(x, "1")[0, 2, 1, 3])
    want = F.conv_transpose2d(signal, net[0].weight.detach().double())  # the conv's adjoint alone
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
    assert not np.allclose(true.project(x, seeds, "1", "deconvnet"), got)


def test_onnx_oracle_replays_a_dag_with_onnx_runtime_forward_values():
    rng = np.random.default_rng(4)
    r = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    node = __import__("onnx").helper.make_node
    nodes = [node("Conv", ["pixels", "w1"], ["c1"], pads=[1, 0, 0, 1]),
             node("Clip", ["c1", "zero", "six"], ["a1"]),
             node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2),
             node("Sigmoid", ["c2"], ["s2"]), node("Mul", ["c2", "s2"], ["silu"]),
             node("Add", ["silu", "a1"], ["sum"]), node("Concat", ["sum", "a1"], ["cat"], axis=1),
             node("Transpose", ["cat"], ["t"], perm=[0, 2, 3, 1]), node("Transpose", ["t"], ["tt"], perm=[0, 3, 1, 2]),
             node("MaxPool", ["tt"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
             node("Relu", ["p"], ["out"])]
    inits = [const("w1", r(4, 3, 3, 3)), const("w2", r(4, 2, 3, 3)), const("zero", np.float32(0)),
             const("six", np.float32(6))]
    proto = make_model(nodes, inits, ["N", 3, 9, 8], outputs=("a1", "silu", "cat", "out"))
    x = r(2, 3, 9, 8)
    oracle = onnx_oracle(proto)
    want = run(proto, {"pixels": x}, ["a1", "silu", "cat", "out"])
    for name, value in want.items():
        np.testing.assert_allclose(oracle.tap(x, name), value, rtol=1e-5, atol=1e-5)
    oracle.project(x, pick_seeds(want["out"], 3), "out", "guided")
    assert oracle.replaced_calls["relu"] == 2  # the Clip(0, 6) and the Relu


def test_onnx_oracle_equals_the_torch_module_it_was_exported_from():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    proto = export_torch(net, (3, 32, 32))
    relu_of_layer1 = [n.output[0] for n in proto.graph.node if n.op_type == "Relu"][2]  # layer1.0 out
    x = np.random.default_rng(5).normal(size=(2, 3, 32, 32)).astype(np.float32)
    seeds = pick_seeds(Oracle(net).tap(x, "layer1.0"), 3)
    for mode in MODES:
        assert_close(onnx_oracle(proto).project(x, seeds, relu_of_layer1, mode),
                     Oracle(net).project(x, seeds, "layer1.0", mode), rtol=1e-5)


def test_import_does_not_import_torch():
    code = "import sys, cnnviz_fast.testing.oracle; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
