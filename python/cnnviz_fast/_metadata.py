"""The metadata a cnnviz_fast ONNX file carries (ONNX `metadata_props`, JSON values).

Keys:
  cnnviz.model       model name, e.g. "zfnet", "demo"
  cnnviz.layers      [{"name": "conv1", "tensor": "<onnx tensor>", "kind": "conv"|"fc"}, ...] in
                     forward order; "tensor" is the post-ReLU output that is tapped
  cnnviz.preprocess  {"resize": int (shorter side), "crop": int (centre crop), "mean": [r, g, b],
                      "std": [r, g, b], "channel_order": "RGB"|"BGR", "scale": 255.0}
                     pixel -> (pixel / scale - mean) / std, channels in channel_order;
                     optional "interpolation": "bilinear"|"bicubic"|"nearest"|"lanczos". Also the
                     keys of `Model.load(..., preprocess=)` and `--preprocess` (`parse_preprocess`),
                     which override the file's; values are checked by `data.Preprocess`
  cnnviz.labels      ["class 0", ...] where known
  cnnviz.info        free-form provenance dict (accuracy, seed, weights file, ...)
A file without these keys (any foreign ONNX model) is still loadable: the graph compiler then
derives layer names from the graph and uses ImageNet preprocessing defaults.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

PREFIX = "cnnviz."
KEYS = ("model", "layers", "preprocess", "labels", "info")

PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "channel_order", "scale", "interpolation")

IMAGENET_PREPROCESS = {
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
    "scale": 255.0,
}


def write_metadata(model: onnx.ModelProto, /, **values: Any) -> None:
    """Set cnnviz.* keys on `model` in place (keys from KEYS; values JSON-serialisable)."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}; expected some of {KEYS}")
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in values.items():
        if value is not None:
            props[PREFIX + key] = value if key == "model" else json.dumps(value)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """Return the cnnviz.* keys present on `model`, decoded (missing keys are absent)."""
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if not p.key.startswith(PREFIX):
            continue
        key = p.key[len(PREFIX):]
        if key not in KEYS:
            continue
        try:
            out[key] = p.value if key == "model" else json.loads(p.value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ONNX metadata {p.key!r} is not valid JSON: {exc}") from None
    return out


def parse_preprocess(spec: dict | str | os.PathLike) -> dict[str, Any]:
    """Preprocessing keys from a dict, JSON text (`'{"scale": 1, "mean": [0, 0, 0]}'`) or the path of
    a JSON file — what `--preprocess JSON-or-FILE` takes. ValueError for unreadable JSON, a value
    that is not an object, or unknown keys; the values are checked when a Model uses them."""
    if isinstance(spec, dict):
        value = dict(spec)
    else:
        text = os.fspath(spec)
        source = "--preprocess"
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"preprocess {text!r} is neither JSON (an object in braces) nor a file")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read preprocess file {path}: {exc}") from None
            source = str(path)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"preprocess ({source}) is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"preprocess ({source}) must be a JSON object, not {type(value).__name__}")
    unknown = sorted(set(value) - set(PREPROCESS_KEYS))
    if unknown:
        raise ValueError(f"unknown preprocess key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"known keys: {', '.join(PREPROCESS_KEYS)}")
    return value
