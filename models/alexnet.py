"""AlexNet in torchvision's layout (state-dict keys features.0 ... classifier.6, exactly).

At 224x224: conv1 64@11x11/4 pad 2 -> 55, pool -> 27, conv2 192@5x5 -> 27, pool -> 13,
conv3 384, conv4 256, conv5 256 @3x3 -> 13, pool -> 6, avgpool (6, 6), fc6 4096, fc7 4096, fc8 1000.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ._weights import init_weights

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torchvision's adaptive average pool, skipped when the map already has the output size.

    At the canonical 224x224 input the map is already 6x6 (AlexNet) or 7x7 (VGG16), so the pool is
    an identity; skipping it keeps the exported ONNX graph a plain Conv/Relu/MaxPool/Gemm chain
    (no AveragePool step in the deconvnet's reverse plan). The shape test is on static sizes, so
    tracing records no op for it. At other input sizes it pools as torchvision does (the ONNX
    exporter then emits an AveragePool where the sizes divide, and refuses otherwise).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            # Under tracing the sizes are tensors and the tracer warns that the test becomes a
            # constant; a constant is intended: the exported graph has a fixed spatial size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            identity = tuple(int(s) for s in x.shape[-2:]) == _pair(self.output_size)
        return x if identity else super().forward(x)


class AlexNet(nn.Module):
    """AlexNet ('one weird trick' variant, as torchvision ships it) for 3x224x224 inputs."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def taps(self) -> list[tuple[str, nn.ReLU]]:
        """(layer name, ReLU module) in forward order; the ReLU outputs are the tapped tensors."""
        relus = [m for m in self.features if isinstance(m, nn.ReLU)]
        relus += [m for m in self.classifier if isinstance(m, nn.ReLU)]
        return list(zip(LAYERS, relus, strict=True))

    @property
    def layer_names(self) -> list[str]:
        return list(LAYERS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
