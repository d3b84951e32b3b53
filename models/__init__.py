"""Model zoo: ZFNet (as in the paper), AlexNet, VGG16, ResNet-18 and ResNet-50 (torchvision
layout) in PyTorch.

Installed as `cnnviz_fast.zoo`. Importing this package does not import torch: the registry is
plain data, and `build` imports the PyTorch definition only when a model is built, so the rest of
cnnviz_fast can list zoo models and find the shipped demo model without torch installed.

    import torch
    from cnnviz_fast import zoo
    torch.manual_seed(0)
    net = zoo.build("zfnet")                     # random init
    zoo.load_weights(net, "zfnet.pth")           # or a local .safetensors file
    zoo.export_zoo("vgg16", "vgg16.onnx", weights="vgg16.pth")
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from cnnviz_fast._metadata import IMAGENET_PREPROCESS


@dataclass(frozen=True)
class ZooEntry:
    """What is known about a zoo model without building it."""

    name: str
    module: str          # submodule of this package holding the definition
    cls: str             # class name in that submodule
    layers: tuple[str, ...]  # tapped layer names in forward order (ReLU outputs)
    key_layout: str      # whose state-dict key names the weights files must use
    input_size: tuple[int, int, int] = (3, 224, 224)
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_PREPROCESS))
    num_classes: int = 1000


_CONVS5 = ("conv1", "conv2", "conv3", "conv4", "conv5")

ZOO: dict[str, ZooEntry] = {
    "zfnet": ZooEntry("zfnet", "zfnet", "ZFNet", _CONVS5 + ("fc6", "fc7"), "pytorchcv zfnet"),
    "alexnet": ZooEntry("alexnet", "alexnet", "AlexNet", _CONVS5 + ("fc6", "fc7"), "torchvision alexnet"),
    "vgg16": ZooEntry("vgg16", "vgg16", "VGG16",
                      tuple(f"conv{i}" for i in range(1, 14)) + ("fc6", "fc7"), "torchvision vgg16"),
    # Block outputs, named as the graph compiler names any torch ResNet's (models/resnet.py).
    "resnet18": ZooEntry("resnet18", "resnet", "ResNet18",
                         ("conv1",) + tuple(f"layer{s + 1}.{b}" for s in range(4) for b in range(2)),
                         "torchvision resnet18"),
    "resnet50": ZooEntry("resnet50", "resnet", "ResNet50",
                         ("conv1",) + tuple(f"layer{s + 1}.{b}" for s, n in enumerate((3, 4, 6, 3))
                                            for b in range(n)), "torchvision resnet50"),
}


def entry(name: str) -> ZooEntry:
    """The registry entry for `name`; ValueError listing the zoo when unknown."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has {', '.join(sorted(ZOO))}") from None


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            "zoo models are PyTorch definitions: building, loading weights into or exporting them "
            "needs torch and safetensors (pip install 'cnnviz_fast[torch]'); running an exported "
            ".onnx file does not") from None


def build(name: str):
    """A new `torch.nn.Module` for zoo model `name`, randomly initialised (seed with torch.manual_seed)."""
    e = entry(name)
    _require_torch()
    import torch

    from ._weights import init_weights

    cls = getattr(importlib.import_module(f".{e.module}", __name__), e.cls)
    # Construct without storage, then initialise once: the default per-layer init followed by
    # init_weights would fill ~60-140M parameters twice.
    with torch.device("meta"):
        model = cls(num_classes=e.num_classes)
    return init_weights(model.to_empty(device="cpu"))


def load_weights(module, path, model_name=None):
    """Load a local .pth/.pt/.safetensors state dict into `module`; see `_weights.load_weights`."""
    _require_torch()
    from ._weights import load_weights as _load

    return _load(module, path, model_name)


def export_zoo(name, path, weights=None, random_weights=False, seed=0, labels=None):
    """Export zoo model `name` to ONNX at `path`; see `export.export_zoo`."""
    _require_torch()
    from .export import export_zoo as _export

    return _export(name, path, weights=weights, random_weights=random_weights, seed=seed, labels=labels)


__all__ = ["ZOO", "ZooEntry", "entry", "build", "load_weights", "export_zoo"]
