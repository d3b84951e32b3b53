"""The projector tests' oracle: an autograd deconvnet written here, independent of the reverse plan.

A PyTorch network (a zoo module, or the ONNX graph of the demo model replayed op by op in torch)
whose ReLUs keep their forward but take a backward chosen by mode — deconvnet: relu(grad);
guided: relu(grad) * (forward > 0); gradient: grad * (forward > 0) — with LRN skipped (identity
backward). The gradient of (one-hot x activation value) at the tap with respect to the image is the
projection. Biases never enter a backward pass, so "no biases in the path" holds by construction.
The tests here check the oracle itself against ONNX Runtime's forward pass.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

MODES = ("deconvnet", "guided", "gradient")


class _ModeReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mode):
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        ctx.mode = mode
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if ctx.mode == "deconvnet":
            return g.clamp_min(0), None
        if ctx.mode == "guided":
            return g.clamp_min(0) * (y > 0), None
        return g * (y > 0), None


class _SkipFn(torch.autograd.Function):
    """Forward: `fn(x)`; backward: the identity (how the deconvnet treats LRN)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


class ModeReLU(nn.Module):
    mode = "deconvnet"

    def forward(self, x):
        return _ModeReluFn.apply(x, self.mode)


class SkipLRN(nn.Module):
    def __init__(self, lrn: nn.Module):
        super().__init__()
        self.fn = functools.partial(F.local_response_norm, size=lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k)

    def forward(self, x):
        return _SkipFn.apply(x, self.fn)


class _Stop(Exception):
    pass


class Oracle:
    """`project(x, seeds, layer, mode)` for a torch net whose tapped ReLUs are `taps[layer]`.

    It computes in float64: a float32 autograd pass through VGG16's thirteen layers is itself
    off by ~1e-4 relative for some seeds, more than the projector (measured against float64).
    """

    def __init__(self, net: nn.Module, taps: dict[str, nn.Module]):
        self.net = net.eval().double()
        self.taps = taps
        for p in net.parameters():
            p.requires_grad_(False)

    def tap(self, x: np.ndarray, layer: str) -> np.ndarray:
        with torch.no_grad():
            return self._forward(torch.from_numpy(x.astype(np.float64)), layer).numpy()

    def project(self, x: np.ndarray, seeds, layer: str, mode: str) -> np.ndarray:
        for m in self.net.modules():
            if isinstance(m, ModeReLU):
                m.mode = mode
        xs = torch.from_numpy(x[[s[0] for s in seeds]].astype(np.float64)).requires_grad_()
        out = self._forward(xs, layer)
        seed = torch.zeros_like(out)
        for k, (_, c, *pos) in enumerate(seeds):
            at = (k, c, *pos[: out.dim() - 2])
            seed[at] = out[at].detach()
        (grad,) = torch.autograd.grad(out, xs, seed)
        return grad.numpy()

    def _forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        got = {}

        def hook(module, inputs, output):
            got["out"] = output
            raise _Stop  # nothing after the tap is needed

        handle = self.taps[layer].register_forward_hook(hook)
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got["out"]


def zoo_oracle(name: str, seed: int = 0) -> Oracle:
    """The zoo's PyTorch model, initialised as `Model.load(name, random_weights=True, seed=seed)`."""
    from cnnviz_fast import zoo

    torch.manual_seed(seed)
    net = zoo.build(name)
    taps = dict(net.taps())
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                new = ModeReLU()
                taps = {k: (new if v is child else v) for k, v in taps.items()}
                setattr(parent, child_name, new)
            elif type(child).__name__ == "LocalResponseNorm":
                setattr(parent, child_name, SkipLRN(child))
    return Oracle(net, taps)


class _OnnxNet(nn.Module):
    """An ONNX chain CNN replayed in torch (Conv, BatchNormalization, Relu, MaxPool, LRN, Flatten,
    Gemm, Dropout, Identity) from the file's own weights; every Relu is a `ModeReLU` module."""

    def __init__(self, proto: onnx.ModelProto):
        super().__init__()
        arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        self.weights = {k: torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a.copy())
                        for k, a in arrays.items()}
        self.nodes = list(proto.graph.node)
        self.image = proto.graph.input[0].name
        self.relus = nn.ModuleDict({f"r{i}": ModeReLU() for i, n in enumerate(self.nodes) if n.op_type == "Relu"})
        self.relu_of = {n.output[0]: self.relus[f"r{i}"] for i, n in enumerate(self.nodes) if n.op_type == "Relu"}

    def forward(self, x):
        env = {self.image: x, **self.weights}
        for i, node in enumerate(self.nodes):
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            ins = [env[t] for t in node.input if t]
            env[node.output[0]] = self._op(i, node.op_type, ins, a)
        return env[self.nodes[-1].output[0]]

    def _op(self, i, op, ins, a):
        if op == "Relu":
            return self.relus[f"r{i}"](ins[0])
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], "symmetric pads only"
            return F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a.get("strides", 1), pads[:2],
                            a.get("dilations", 1), a.get("group", 1))
        if op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], "symmetric pads only"
            return F.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), pads[:2], a.get("dilations", 1),
                                ceil_mode=bool(a.get("ceil_mode", 0)))
        if op == "BatchNormalization":
            return F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], False, 0.0, a.get("epsilon", 1e-5))
        if op == "LRN":
            fn = functools.partial(F.local_response_norm, size=a["size"], alpha=a.get("alpha", 1e-4),
                                   beta=a.get("beta", 0.75), k=a.get("bias", 1.0))
            return _SkipFn.apply(ins[0], fn)
        if op == "Flatten":
            return torch.flatten(ins[0], a.get("axis", 1))
        if op == "Gemm":
            w = ins[1].T if a.get("transB", 0) else ins[1]
            y = a.get("alpha", 1.0) * ins[0] @ w
            return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 else y
        if op in ("Dropout", "Identity"):
            return ins[0]
        raise NotImplementedError(f"the test oracle does not replay {op}")


def onnx_oracle(source) -> Oracle:
    """An ONNX model (a path or a ModelProto, before any folding) replayed in torch; taps are
    named by their Relu output tensors."""
    net = _OnnxNet(source if isinstance(source, onnx.ModelProto) else onnx.load(str(source)))
    return Oracle(net, dict(net.relu_of))


def ort_tap(model, x: np.ndarray, layer) -> np.ndarray:
    sess = ort.InferenceSession(model.projection_graph(layer).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([model.layer(layer).tensor], {model.input_name: x})[0]


def pick_seeds(tap: np.ndarray, count: int = 6, offset: int = 0) -> list[tuple[int, ...]]:
    """Seeds at corners, edges and the centre (fc: units), each on a firing unit, over the images;
    `offset` rotates the list of spots, so that a few seeds per layer still visit all of them."""
    n_img = tap.shape[0]
    if tap.ndim == 2:
        order = np.argsort(-tap, axis=1)
        return [(k % n_img, int(order[k % n_img, k // n_img])) for k in range(count)]
    h, w = tap.shape[2:]
    spots = [(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2), (h - 1, w // 3), (h // 3, 0)]
    spots = spots[offset % 6:] + spots[:offset % 6]
    seeds = []
    for k, (y, x) in enumerate(spots[:count]):
        for dn in range(n_img):
            n = (k + dn) % n_img
            firing = np.flatnonzero(tap[n, :, y, x] > 0)
            if firing.size:
                c = int(firing[(7 * k) % firing.size]) if k % 2 else int(np.argmax(tap[n, :, y, x]))
                seeds.append((n, c, y, x))
                break
    return seeds


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """Per seed: max |got - want| <= rtol * max |want| (and the oracle is not all zero)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).reshape(len(want), -1).max(1)
    assert np.all(scale > 0), "a seed projected to zero: pick firing units"
    err = np.abs(got - want).reshape(len(want), -1).max(1)
    assert np.all(err <= rtol * scale), f"relative errors {err / scale}"


@pytest.fixture(scope="module")
def demo_oracle():
    from cnnviz_fast.graph import Model

    model = Model.load("demo")
    return model, onnx_oracle(model.path)


def test_onnx_oracle_forward_equals_onnx_runtime(demo_oracle):
    model, oracle = demo_oracle
    x = np.random.default_rng(0).normal(size=(2, *model.input_size)).astype(np.float32)
    for layer in model.all_layers:
        np.testing.assert_allclose(oracle.tap(x, layer.tensor), ort_tap(model, x, layer.name), rtol=1e-4, atol=1e-5)


def test_oracle_modes_differ_only_in_the_relu_rule(demo_oracle):
    model, oracle = demo_oracle
    x = np.random.default_rng(1).normal(size=(2, *model.input_size)).astype(np.float32)
    layer = model.layer("conv3")
    seeds = pick_seeds(ort_tap(model, x, layer.name), 2)
    got = {mode: oracle.project(x, seeds, layer.tensor, mode) for mode in MODES}
    assert not np.allclose(got["deconvnet"], got["gradient"])
    assert not np.allclose(got["guided"], got["gradient"])
