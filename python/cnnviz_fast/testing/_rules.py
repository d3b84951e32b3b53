"""The torch side of the oracle: the ReLU rule per mode and LRN's identity backward, applied to
every ReLU-like call of a forward pass by a TorchFunctionMode (so functional calls, modules reused
twice and in-place ReLUs are all caught, and no module has to be replaced).

Imported only when an oracle runs: this module needs torch.
"""
from __future__ import annotations

import numbers

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

MODES = ("deconvnet", "guided", "gradient")


class ReluRule(torch.autograd.Function):
    """clamp(x, 0, upper) forward; backward by mode, with `mask` = the op's own derivative mask
    (0 < x, and x < upper for ReLU6-like ops): deconvnet relu(g); guided relu(g)·mask;
    gradient g·mask (= the true gradient). `inplace` writes into x as the original op would."""

    @staticmethod
    def forward(ctx, x, mode, upper=None, inplace=False):
        if inplace:
            ctx.mark_dirty(x)
            y = x.clamp_(0, upper)
        else:
            y = x.clamp(0, upper)
        ctx.save_for_backward(y)  # y is in (0, upper) exactly where x is: the mask survives in-place
        ctx.mode, ctx.upper = mode, upper
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if ctx.mode == "deconvnet":
            return g.clamp_min(0), None, None, None
        mask = y > 0
        if ctx.upper is not None:
            mask &= y < ctx.upper
        return (g.clamp_min(0) if ctx.mode == "guided" else g) * mask, None, None, None


class SkipLRN(torch.autograd.Function):
    """F.local_response_norm forward, identity backward (ZF: no normalisation in the reconstruction)."""

    @staticmethod
    def forward(ctx, x, size, alpha=1e-4, beta=0.75, k=1.0):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None, None


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_ = {torch.relu_, torch.Tensor.relu_}
_CLAMP = {torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip}
_CLAMP_ = {torch.clamp_, torch.clip_, torch.Tensor.clamp_, torch.Tensor.clip_}
_CLAMP_MIN = {torch.clamp_min, torch.Tensor.clamp_min}
_CLAMP_MIN_ = {torch.clamp_min_, torch.Tensor.clamp_min_}


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def relu_like(func, args, kwargs):
    """(input, upper, inplace) when the call is a ReLU-like op (min 0, no or a positive max), else None."""
    if func in _RELU or func in _RELU_:
        return args[0], None, func in _RELU_ or bool(kwargs.get("inplace", False))
    if func is F.relu6:
        return args[0], 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh:  # nn.ReLU6 is Hardtanh(0, 6)
        lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        if lo == 0 and hi > 0:
            return args[0], float(hi), bool(_arg(args, kwargs, 3, "inplace", False))
        return None
    if func in _CLAMP or func in _CLAMP_ or func in _CLAMP_MIN or func in _CLAMP_MIN_:
        lo = _arg(args, kwargs, 1, "min")
        hi = None if func in _CLAMP_MIN or func in _CLAMP_MIN_ else _arg(args, kwargs, 2, "max")
        if _number(lo) and lo == 0 and (hi is None or (_number(hi) and hi > 0)):
            return args[0], None if hi is None else float(hi), func in _CLAMP_ or func in _CLAMP_MIN_
    return None


class RuleMode(TorchFunctionMode):
    """While active, every ReLU-like call runs as `ReluRule` under `mode`, and (with `lrn_identity`)
    every F.local_response_norm as `SkipLRN`; all other ops keep their true autograd backward.
    `calls` counts the replaced calls by kind ("relu", "lrn")."""

    def __init__(self, mode: str, lrn_identity: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.mode, self.lrn_identity = mode, lrn_identity
        self.calls = {"relu": 0, "lrn": 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hit = relu_like(func, args, kwargs)
        if hit is not None and isinstance(hit[0], torch.Tensor):
            self.calls["relu"] += 1
            x, upper, inplace = hit
            return ReluRule.apply(x, self.mode, upper, inplace)
        if func is F.local_response_norm and self.lrn_identity:
            self.calls["lrn"] += 1
            size = _arg(args, kwargs, 1, "size")
            return SkipLRN.apply(args[0], size, _arg(args, kwargs, 2, "alpha", 1e-4),
                                 _arg(args, kwargs, 3, "beta", 0.75), _arg(args, kwargs, 4, "k", 1.0))
        return func(*args, **kwargs)
