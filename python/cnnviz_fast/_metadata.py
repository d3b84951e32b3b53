"""The metadata a cnnviz_fast ONNX file carries (ONNX `metadata_props`, JSON values).

Keys:
  cnnviz.model       model name, e.g. "zfnet", "demo"
  cnnviz.layers      [{"name": "conv1", "tensor": "<onnx tensor>", "kind": "conv"|"fc"}, ...] in
                     forward order; "tensor" is the post-ReLU output that is tapped
  cnnviz.preprocess  {"resize": int (shorter side), "crop": int (centre crop), "mean": [r, g, b],
                      "std": [r, g, b], "channel_order": "RGB"|"BGR", "scale": 255.0}
                     pixel -> (pixel / scale - mean) / std, channels in channel_order
  cnnviz.labels      ["class 0", ...] where known
  cnnviz.info        free-form provenance dict (accuracy, seed, weights file, ...)
A file without these keys (any foreign ONNX model) is still loadable: the graph compiler then
derives layer names from the graph and uses ImageNet preprocessing defaults.
"""
from __future__ import annotations

import json
from typing import Any

import onnx

PREFIX = "cnnviz."
KEYS = ("model", "layers", "preprocess", "labels", "info")

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
