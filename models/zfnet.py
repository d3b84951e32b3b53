"""ZFNet as in Zeiler & Fergus 2014, Fig. 3, with pytorchcv's state-dict key names.

Geometry at 224x224 (the paper's): conv1 96@7x7/2 pad 1 -> 110, 3x3/2 max-pool -> 55, LRN;
conv2 256@5x5/2 -> 26, pool -> 13, LRN; conv3 384, conv4 384, conv5 256 @3x3/1 pad 1 -> 13;
pool -> 6; fc6 4096, fc7 4096, fc8 1000. The pools use ceil_mode: floor would give 26 -> 12.

Key names follow pytorchcv's `zfnet` (features.stage1.unit1.conv.weight, ..., output.fc1.fc.weight,
output.fc3.weight), so its ImageNet weights load unchanged. One difference from pytorchcv: it
normalises (LRN) before pooling; here the order is the paper's (section 3: relu, max-pool, then
contrast normalisation across feature maps). Weights trained with the other order still load; the
outputs differ slightly because LRN and max-pool do not commute.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from ._weights import init_weights

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class _LRNExport(torch.autograd.Function):
    """F.local_response_norm that exports as one ONNX LRN node (used only while exporting).

    PyTorch decomposes LRN into pad/avg-pool/pow arithmetic, which the graph compiler would see as
    a non-chain subgraph; one LRN node is what the deconvnet skips (identity in the reverse pass).
    For odd `size` ONNX LRN and PyTorch sum the same channel window and both scale alpha by 1/size.
    """

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        with warnings.catch_warnings():
            # The tracer warns about F.local_response_norm's data-dependent branch; its trace is
            # discarded anyway, `symbolic` stands in for the whole op.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN (Krizhevsky et al.); defaults are pytorchcv's: size 5, alpha 1e-4, beta 0.75, k 2."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size % 2 != 1:
            raise ValueError("LRN size must be odd (ONNX and PyTorch centre even windows differently)")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _LRNExport.apply(x, self.size, self.alpha, self.beta, self.k)
        # Eager: the differentiable native op (receptive-field tests take gradients through it).
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class _ConvUnit(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activ(self.conv(x))


class _DenseUnit(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(cin, cout)
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activ(self.fc(self.dropout(x)))


class _Output(nn.Module):
    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.fc1 = _DenseUnit(cin, 4096)
        self.fc2 = _DenseUnit(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.fc2(self.fc1(x)))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class ZFNet(nn.Module):
    """ZFNet (Zeiler & Fergus 2014, Fig. 3) for 3x224x224 inputs."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("stage1", nn.Sequential())
        self.features.stage1.add_module("unit1", _ConvUnit(3, 96, 7, 2, 1))
        self.features.stage1.add_module("pool1", _pool())
        self.features.stage1.add_module("norm1", LocalResponseNorm())
        self.features.add_module("stage2", nn.Sequential())
        self.features.stage2.add_module("unit1", _ConvUnit(96, 256, 5, 2, 0))
        self.features.stage2.add_module("pool2", _pool())
        self.features.stage2.add_module("norm2", LocalResponseNorm())
        self.features.add_module("stage3", nn.Sequential())
        self.features.stage3.add_module("unit1", _ConvUnit(256, 384, 3, 1, 1))
        self.features.stage3.add_module("unit2", _ConvUnit(384, 384, 3, 1, 1))
        self.features.stage3.add_module("unit3", _ConvUnit(384, 256, 3, 1, 1))
        self.features.stage3.add_module("pool3", _pool())
        self.output = _Output(256 * 6 * 6, num_classes)
        init_weights(self)

    def taps(self) -> list[tuple[str, nn.ReLU]]:
        """(layer name, ReLU module) in forward order; the ReLU outputs are the tapped tensors."""
        s = self.features
        relus = [s.stage1.unit1.activ, s.stage2.unit1.activ, s.stage3.unit1.activ,
                 s.stage3.unit2.activ, s.stage3.unit3.activ, self.output.fc1.activ, self.output.fc2.activ]
        return list(zip(LAYERS, relus, strict=True))

    @property
    def layer_names(self) -> list[str]:
        return list(LAYERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.flatten(self.features(x), 1))
