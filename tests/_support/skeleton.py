"""The receptive-field oracle: `Skeleton`, a torch model made linear so that its gradient support
is the receptive field, and the probe positions the receptive-field tests query."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Tap(nn.Module):
    """Stands in for a tapped ReLU: identity that keeps its output for autograd."""

    def forward(self, x):
        self.out = x
        return x


class _SumConv(nn.Module):
    """A Conv2d's geometry on the channel sum with an all-ones kernel (1 channel out)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        ones = torch.ones(1, 1, *c.kernel_size, dtype=x.dtype)
        return F.conv2d(x.sum(1, keepdim=True), ones, None, c.stride, c.padding, c.dilation)


class SumPool(nn.Module):
    """A MaxPool2d's windows summed instead of maxed (same output size, ceil_mode included)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        p = self.pool
        k, s = nn.modules.utils._pair(p.kernel_size), nn.modules.utils._pair(p.stride or p.kernel_size)
        pad, dil = nn.modules.utils._pair(p.padding), nn.modules.utils._pair(p.dilation)
        with torch.no_grad():
            oh, ow = F.max_pool2d(x, k, s, pad, dil, p.ceil_mode).shape[-2:]
        # Extra zeros at the end stand for windows that ceil_mode lets run past the input.
        xp = F.pad(x, (pad[1], pad[1] + s[1], pad[0], pad[0] + s[0]))
        ones = torch.ones(x.shape[1], 1, *k, dtype=x.dtype)
        return F.conv2d(xp, ones, None, s, 0, dil, groups=x.shape[1])[..., :oh, :ow]


class _SumAll(nn.Module):
    def forward(self, x):
        return x.sum(-1, keepdim=True)


class Skeleton:
    """`module` made linear with positive weights, so gradient support = receptive field.

    The true gradient of a ReLU net is sparse (dead units, the single argmax of each max-pool
    window), so its support would undercount the field. The same module with every ReLU, LRN and
    BatchNorm made identity, every max-pool a sum over the same windows, every Conv a ones-kernel
    conv of the channel sum and every Linear a sum, has the same geometry and a gradient that is a
    sum of positive terms: nonzero exactly on the union of the windows, i.e. on the field.
    `taps` are (name, nn.ReLU) of the original module; `outputs()` gives name -> tapped tensor.
    """

    def __init__(self, module: nn.Module, taps):
        self.module = module.eval()
        self.taps = {}
        by_id = {id(relu): name for name, relu in taps}
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                new = self._replacement(child, by_id)
                if new is not None:
                    setattr(parent, child_name, new)

    def _replacement(self, m: nn.Module, by_id: dict) -> nn.Module | None:
        if isinstance(m, nn.ReLU):
            tap = _Tap()
            if id(m) in by_id:
                self.taps[by_id[id(m)]] = tap
            return tap
        if isinstance(m, nn.Conv2d):
            return _SumConv(m)
        if isinstance(m, nn.MaxPool2d):
            return SumPool(m)
        if isinstance(m, nn.Linear):
            return _SumAll()
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)) or type(m).__name__ == "LocalResponseNorm":
            return nn.Identity()
        return None

    def boxes(self, input_hw, queries):
        """Bounding boxes (top, left, bottom, right) of the gradient support of each (name, y, x);
        None where the support is empty (a position that sees only padding). Query b uses batch
        element b, so one backward pass answers all of them."""
        x = torch.ones(len(queries), 3, *input_hw, requires_grad=True)
        self.module(x)
        names = sorted({name for name, _, _ in queries})
        outs = [self.taps[name].out for name in names]
        seeds = [torch.zeros_like(o) for o in outs]
        for b, (name, y, xx) in enumerate(queries):
            seed = seeds[names.index(name)]
            seed[(b, 0, y, xx) if seed.dim() == 4 else (b, 0)] = 1.0
        (grad,) = torch.autograd.grad(outs, x, grad_outputs=seeds)
        out = []
        for g in grad.abs().sum(1) > 0:
            rows = torch.nonzero(g.any(1)).ravel()
            cols = torch.nonzero(g.any(0)).ravel()
            out.append(None if not len(rows) else
                       (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
        return out


def probe_positions(h: int, w: int) -> list[tuple[int, int]]:
    """Two opposite corners (both sides of asymmetric pads), two edge midpoints and the centre."""
    pts = [(0, 0), (h - 1, w - 1), (0, w // 2), (h // 2, w - 1), (h // 2, w // 2)]
    return list(dict.fromkeys(pts))
