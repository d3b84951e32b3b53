"""An independent torch deconvnet: autograd in float64 with only the ReLU backward changed per mode.

API (torch is imported on first use, never at import; `pip install cnnviz_fast[torch]`):

    MODES = ("deconvnet", "guided", "gradient")
    Oracle(net, taps=None, *, dtype="float64", device="cpu", lrn_identity=True, copy=True)
        .tap(x, layer) -> np.ndarray                      # the tapped tensor's forward value
        .project(x, seeds, layer, mode="deconvnet", *, batch=64, out_dtype=np.float64)
            -> np.ndarray [S, *x.shape[1:]]               # e.g. [S, 3, H, W]
        .replaced_calls -> {"relu": int, "lrn": int}      # calls given the rule in the last forward
    zoo_oracle(name, seed=0, **kw) -> Oracle              # zoo net as Model.load(name, random_weights=True, seed=seed)
    onnx_oracle(source, **kw) -> Oracle                   # an ONNX file/ModelProto replayed in torch;
                                                          # every node output is a tap, by tensor name
    ReluRule, SkipLRN                                     # the torch autograd Functions (lazy attributes)

- `net`: any nn.Module taking NCHW images (torchvision/timm ResNet, DenseNet, MobileNet, ...).
- `layer`: a key of `taps` (a {name: module} mapping), else a module path for `net.get_submodule`
  ("layer2.1"), or a module; the tap is that module's output at its FIRST call (the forward stops
  there, nothing above it runs).
- `x`: float array [N, ...] of images; `seeds`: (n, c, y, x) per seed ((n, c) for a [N, C] tap):
  seed s projects image n from a tensor that is zero except the activation value at (c, y, x).
- `mode`: deconvnet relu(g); guided relu(g)·[x > 0]; gradient g·[x > 0] (the true gradient), at
  every ReLU-like call — nn.ReLU, nn.ReLU6, Hardtanh(0, m), F.relu/relu6/hardtanh, torch.relu(_),
  Tensor.relu(_), clamp/clip/clamp_min with min 0 — in place or not, however often a module is
  reused. For an upper bound m (ReLU6), [x > 0] is [0 < x < m], the op's own derivative mask.
  LRN takes the identity backward (ZF; `lrn_identity=False` keeps its true one). Every other op
  keeps its true autograd backward: Sigmoid, SiLU, HardSwish, GELU, LayerNorm, SE gates, ... are
  their local adjoints at the image's forward values; MaxPool routes to the first maximum of its
  window in row-major order (PyTorch CPU max_pool2d), the projector's switch rule.
- Eager modules only: TorchScript bypasses the rule mode. The first-maximum switch is the CPU
  kernels' rule; `device="cuda"` is for speed baselines, not for exact checks.
- float64 by default: a float32 autograd pass through VGG16 is itself ~1e-4 relative off.
  `copy=True` converts a deep copy, leaving the caller's module as it was.
"""
from __future__ import annotations

import copy as _copy
from typing import Any, Mapping

import numpy as np

MODES = ("deconvnet", "guided", "gradient")


class _Stop(Exception):
    """Raised by the tap's hook: nothing above the tap is needed."""


class Oracle:
    """See the module docstring."""

    def __init__(self, net, taps: Mapping[str, Any] | None = None, *, dtype: str = "float64",
                 device: str = "cpu", lrn_identity: bool = True, copy: bool = True):
        import torch

        tdtype = {"float64": torch.float64, "float32": torch.float32}[str(dtype)]
        if copy:
            # The taps must point into the copy: deepcopy both in one memo.
            net, taps = _copy.deepcopy((net, dict(taps or {})))
        self.net = net.eval().to(device=device, dtype=tdtype)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.taps = dict(taps or {})
        self.dtype, self.device, self.lrn_identity = tdtype, torch.device(device), lrn_identity
        self.replaced_calls = {"relu": 0, "lrn": 0}

    def tap(self, x: np.ndarray, layer) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self._forward(self._tensor(x), layer, "gradient")
        return out.cpu().numpy()

    def project(self, x: np.ndarray, seeds, layer, mode: str = "deconvnet", *, batch: int = 64,
                out_dtype=np.float64) -> np.ndarray:
        import torch

        seeds = np.asarray(seeds, dtype=np.int64).reshape(len(seeds), -1)
        if len(seeds) == 0:
            return np.zeros((0, *np.shape(x)[1:]), out_dtype)
        outs = []
        for lo in range(0, len(seeds), batch):
            s = seeds[lo:lo + batch]
            xs = self._tensor(np.asarray(x)[s[:, 0]]).requires_grad_()
            out = self._forward(xs, layer, mode)
            if s.shape[1] < out.dim():
                raise ValueError(f"seeds need {out.dim()} numbers (n, c, ...) for a tap of shape "
                                 f"{tuple(out.shape)}; got {s.shape[1]}")
            at = (torch.arange(len(s), device=self.device),
                  *(torch.from_numpy(s[:, i]).to(self.device) for i in range(1, out.dim())))
            signal = torch.zeros_like(out)
            signal[at] = out[at].detach()
            (grad,) = torch.autograd.grad(out, xs, signal)
            outs.append(grad.cpu().numpy().astype(out_dtype, copy=False))
        return np.concatenate(outs)

    def module(self, layer):
        """The module whose output is tapped for `layer` (a taps key, a module path or a module)."""
        if isinstance(layer, str):
            if layer in self.taps:
                return self.taps[layer]
            try:
                return self.net.get_submodule(layer)
            except AttributeError:
                raise KeyError(f"no tap or submodule {layer!r}") from None
        return layer

    def _tensor(self, x: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(device=self.device, dtype=self.dtype)

    def _forward(self, xs, layer, mode: str):
        import torch

        from ._rules import RuleMode

        got = {}

        def hook(module, inputs, output):
            got["out"] = output
            raise _Stop

        handle = self.module(layer).register_forward_hook(hook)
        rules = RuleMode(mode, self.lrn_identity)
        try:
            with rules:
                self.net(xs)
        except _Stop:
            pass
        finally:
            handle.remove()
            self.replaced_calls = dict(rules.calls)
        if "out" not in got:
            raise RuntimeError(f"the tap {layer!r} was not called by the forward pass")
        if not isinstance(got["out"], torch.Tensor):
            raise TypeError(f"the tap {layer!r} returns {type(got['out']).__name__}, not a tensor")
        return got["out"]


def zoo_oracle(name: str, seed: int = 0, **kwargs) -> Oracle:
    """The zoo's PyTorch model, initialised as `Model.load(name, random_weights=True, seed=seed)`;
    taps are its layer names (conv1, ..., fc7)."""
    import torch

    from cnnviz_fast import zoo

    torch.manual_seed(seed)
    net = zoo.build(name)
    return Oracle(net, dict(net.taps()), copy=False, **kwargs)


def onnx_oracle(source, **kwargs) -> Oracle:
    """An ONNX model (a path or a ModelProto, before any folding) replayed op by op in torch from the
    file's own weights; every node output tensor is a tap, named as in the file."""
    import onnx

    from ._onnx_replay import OnnxNet

    net = OnnxNet(source if isinstance(source, onnx.ModelProto) else onnx.load(str(source)))
    return Oracle(net, net.tensor_taps(), copy=False, **kwargs)


def __getattr__(name: str):
    if name in ("ReluRule", "SkipLRN", "RuleMode"):
        from . import _rules

        return getattr(_rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
