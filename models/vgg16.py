"""VGG16 (configuration D, no batch norm) in torchvision's layout (keys features.0 ... classifier.6).

Layers are named conv1 ... conv13 in forward order, as every zoo model names its convolutions
(DESIGN.md: conv1...convN); in the paper's block naming conv1 = conv1_1, conv2 = conv1_2,
conv3 = conv2_1, ..., conv13 = conv5_3. fc6 and fc7 are the ReLUs after the first two Linear layers.
"""
from __future__ import annotations

import torch
from torch import nn

from ._weights import init_weights
from .alexnet import AdaptiveAvgPool2d

# Output channels per conv, "M" a 2x2/2 max-pool (Simonyan & Zisserman 2015, Table 1, column D).
_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
LAYERS = tuple(f"conv{i}" for i in range(1, 14)) + ("fc6", "fc7")
BLOCK_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in _CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG16 for 3x224x224 inputs."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = _features()
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
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
