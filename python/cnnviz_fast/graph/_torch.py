"""In-memory export of a torch module for `Model.from_torch` (torch imported only when called)."""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_module(module, input_size: Sequence[int], opset: int = 17) -> onnx.ModelProto:
    """`module` (put in eval mode) exported by torch.onnx's TorchScript exporter (dynamo=False:
    needs nothing beyond torch, and its node names carry the module paths the layer names come
    from), input "input" [N, *input_size] with a dynamic batch."""
    try:
        import torch
    except ImportError:
        raise ModuleNotFoundError("Model.from_torch needs torch (pip install 'cnnviz_fast[torch]')") from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"Model.from_torch takes a torch.nn.Module, not {type(module).__name__}")
    size = tuple(int(s) for s in input_size)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), not {tuple(input_size)}")
    module.eval()
    param = next(module.parameters(), None)
    x = torch.zeros(1, *size, dtype=torch.float32, device=param.device if param is not None else "cpu")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer warnings say nothing to a user here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return onnx.load_model_from_string(buf.getvalue())
