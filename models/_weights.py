"""Weights for zoo models: initialisation and loading from local state-dict files.

Only local files are read (no download): `.pth`/`.pt` through `torch.load(weights_only=True)`, which
never unpickles arbitrary objects, and `.safetensors`. Key names must be those of the layout the
model copies (torchvision for AlexNet/VGG16, pytorchcv for ZFNet); anything else is refused with the
first mismatches listed, because a silently partial load gives plausible-looking nonsense.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

_SHOW = 5  # mismatches named per category in an error message
_WRAPPER_KEYS = ("state_dict", "model")


def init_weights(module: nn.Module) -> nn.Module:
    """Random initialisation for an untrained zoo model (torchvision's VGG scheme, for every model;
    BatchNorm as an identity, torchvision's ResNet init).

    He-normal convolutions keep activations from vanishing through 13 ReLU layers, so a random
    model still gives non-trivial maps to test and visualise. The caller seeds with
    torch.manual_seed.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):  # an identity (the model may be built on "meta")
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    return module


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.pth`/`.pt` or `.safetensors` file (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    ext = path.suffix.lower()
    if ext == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors' own SafetensorError (a header that does not parse, ...)
            raise ValueError(f"weights file {path} is not a readable .safetensors file: {exc}") from None
    if ext not in (".pth", ".pt"):
        raise ValueError(
            f"weights file {path}: unknown extension {path.suffix!r}; expected .pth, .pt or .safetensors"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"weights file {path} could not be read as a state dict with torch.load(weights_only=True) "
            f"(a pickled whole model is not accepted; save model.state_dict() instead): {_load_reason(exc)}"
        ) from None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    # Checkpoints saved from nn.DataParallel prefix every key; the weights are the same.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_reason(exc: Exception) -> str:
    """torch.load's reason without its advice: torch suggests re-running with weights_only=False,
    which would run whatever code the file holds; we never pass that on."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]*)", text)
    if m:  # its first sentence: the rest is advice on allow-listing what the file holds
        return m.group(1).strip().split(". ")[0].rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return "it holds objects other than tensors" if "weights_only" in first else first


def _mismatches(expected: Mapping[str, torch.Tensor], got: Mapping[str, object]) -> list[str]:
    def listed(names: list[str]) -> str:
        more = f" (and {len(names) - _SHOW} more)" if len(names) > _SHOW else ""
        return ", ".join(names[:_SHOW]) + more

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = []
    for k, ref in expected.items():
        value = got.get(k)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            shapes.append(f"{k} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(ref.shape):
            shapes.append(f"{k} has shape {list(value.shape)} in the file, {list(ref.shape)} in the model")
    parts = []
    if missing:
        parts.append(f"missing {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {listed(shapes)}")
    return parts


def load_weights(module: nn.Module, path: str | os.PathLike, model_name: str | None = None) -> nn.Module:
    """Load a local state-dict file into `module` (in place; returns it).

    Raises ValueError naming the first missing keys, unexpected keys and shape mismatches when the
    file does not match the module exactly.
    """
    state = read_state_dict(path)
    expected = module.state_dict()
    problems = _mismatches(expected, state)
    if problems:
        name = model_name or type(module).__name__
        raise ValueError(f"weights file {path} does not match {name}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
    return module
