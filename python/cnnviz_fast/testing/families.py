"""Small random-weight members of the CNN families the graph compiler is tested on, as torch
modules and as cached ONNX exports (torch, torchvision and timm needed only when called).

    FAMILIES                                   # name -> Family(source, builder, input_size)
    build_family("resnet18", seed=0)           # nn.Module, eval mode, seeded random weights
    export_family("resnet18", input_size=None, cache_dir=None, seed=0) -> Path   # .onnx

Names: resnet18, resnet50, densenet121, googlenet, mobilenet_v2, mobilenet_v3_small,
mobilenet_v3_large (torchvision), efficientnet_b0, convnext_atto (timm). Weights: the library's own
initialisation under `torch.manual_seed(seed)`, then every BatchNorm/LayerNorm affine, running
statistic and ConvNeXt layer scale drawn at random too (the defaults are identities, which would
let BN folding or a layer scale of 1e-6 hide mistakes). Exports use torch.onnx's TorchScript
exporter (dynamo=False, opset 17, dynamic batch, input "image", output "logits"), which keeps the
module paths in node names (`/layer1/layer1.0/relu_1/Relu`). An export is cached in `cache_dir`
(default: $CNNVIZ_CACHE/families or the user cache) under a key of name, size, seed and library
versions, so a test session exports each model once.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    source: str                    # "torchvision" or "timm"
    builder: str                   # constructor name in that library
    input_size: tuple[int, int, int]
    kwargs: tuple = ()


FAMILIES: dict[str, Family] = {
    "resnet18": Family("torchvision", "resnet18", (3, 64, 64)),
    "resnet50": Family("torchvision", "resnet50", (3, 64, 64)),
    "densenet121": Family("torchvision", "densenet121", (3, 64, 64)),
    "googlenet": Family("torchvision", "googlenet", (3, 64, 64),
                        (("aux_logits", False), ("init_weights", True))),
    "mobilenet_v2": Family("torchvision", "mobilenet_v2", (3, 64, 64)),
    "mobilenet_v3_small": Family("torchvision", "mobilenet_v3_small", (3, 64, 64)),
    "mobilenet_v3_large": Family("torchvision", "mobilenet_v3_large", (3, 64, 64)),
    "efficientnet_b0": Family("timm", "efficientnet_b0", (3, 64, 64)),
    "convnext_atto": Family("timm", "convnext_atto", (3, 64, 64)),
}


def _family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; one of {', '.join(FAMILIES)}") from None


def build_family(name: str, seed: int = 0):
    """The torch module for `name` (eval mode), seeded random weights as the module docstring says."""
    import torch

    fam = _family(name)
    torch.manual_seed(seed)
    if fam.source == "torchvision":
        import torchvision

        net = getattr(torchvision.models, fam.builder)(weights=None, **dict(fam.kwargs))
    else:
        import timm

        net = timm.create_model(fam.builder, pretrained=False, **dict(fam.kwargs))
    _randomise_norms(net, seed)
    return net.eval()


def _randomise_norms(net, seed: int) -> None:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed + 1)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
                normal(m.running_mean, 0.1)
                uniform(m.running_var, 0.5, 1.5)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
            gamma = getattr(m, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                uniform(gamma, 0.5, 1.5)


def export_family(name: str, input_size: tuple[int, int, int] | None = None,
                  cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """An ONNX export of `build_family(name, seed)` at `input_size` (default the family's), cached."""
    import torch

    fam = _family(name)
    size = tuple(int(s) for s in (input_size or fam.input_size))
    lib = __import__(fam.source)
    key = hashlib.sha256(repr((name, size, seed, torch.__version__, lib.__version__,
                               Path(__file__).read_bytes())).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    path = folder / f"{name}-{'x'.join(map(str, size))}-{key}.onnx"
    if path.is_file():
        return path
    net = build_family(name, seed)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings
        torch.onnx.export(net, (torch.zeros(1, *size),), buf, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def _cache_dir() -> Path:
    if os.environ.get("CNNVIZ_CACHE"):
        return Path(os.environ["CNNVIZ_CACHE"]) / "families"
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "cnnviz_fast" / "families"


__all__ = ["FAMILIES", "Family", "build_family", "export_family"]
