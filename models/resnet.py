"""ResNet-18 and ResNet-50 in torchvision's layout (state-dict keys conv1, bn1, layer1.0.conv1, ...,
layer4.2.downsample.1.running_var, fc, exactly), so torchvision-keyed weight files load as they are.

He et al. 2016 as torchvision builds it: stem 7x7/2 conv + BN + ReLU + 3x3/2 max-pool, four stages
of BasicBlocks (18: 2, 2, 2, 2) or Bottlenecks (50: 3, 4, 6, 3, stride on the 3x3 conv, "v1.5"),
a 1x1 conv + BN shortcut where the shape changes, global average pool, fc. Layers: conv1 (the stem's
ReLU) and each block's output (layer1.0, ..., its final ReLU), the names the graph compiler derives
for any torch ResNet. Each block has its own output ReLU module (torchvision reuses one module
for every ReLU of a block): a module without parameters, so the keys are the same, and the export
can rename that one call's output to the layer name.
"""
from __future__ import annotations

import torch
from torch import nn

from ._weights import init_weights


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.relu_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(y)))))
        return self.relu_out(y + (self.downsample(x) if self.downsample is not None else x))


class _ResNet(nn.Module):
    block: type = BasicBlock
    depths: tuple[int, ...] = (2, 2, 2, 2)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), self.depths), start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for b in range(depth):
                down = None
                if b == 0 and (stride != 1 or cin != planes * self.block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, planes * self.block.expansion, 1, stride, bias=False),
                                         _bn(planes * self.block.expansion))
                blocks.append(self.block(cin, planes, stride if b == 0 else 1, down))
                cin = planes * self.block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def taps(self) -> list[tuple[str, nn.ReLU]]:
        """(layer name, ReLU module) in forward order: the stem, then each block's output."""
        out = [("conv1", self.relu)]
        for stage in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{stage}")):
                out.append((f"layer{stage}.{b}", block.relu_out))
        return out

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.taps()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(_ResNet):
    block, depths = BasicBlock, (2, 2, 2, 2)


class ResNet50(_ResNet):
    block, depths = Bottleneck, (3, 4, 6, 3)

