"""Export a PyTorch CNN to an ONNX file that cnnviz_fast reads: named layer tensors and metadata.

The exported graph has a dynamic batch axis (input "input", output "logits"). The output tensor of
each tapped ReLU is renamed to its layer name (conv1, ..., fc6, fc7), so a tensor name is a layer
name, and the metadata (`cnnviz_fast._metadata`) records layers, preprocessing, labels and
provenance.

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`). It needs nothing beyond torch
and onnx, keeps module paths in node names and emits the plain op chain the graph compiler plans
(Conv, Relu, MaxPool, LRN, Flatten, Gemm). The dynamo exporter would need onnxscript.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch
from torch import nn

from cnnviz_fast._metadata import write_metadata

from . import build, entry
from ._weights import load_weights

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_FC_OPS = ("Gemm", "MatMul")


def _relu_call_order(module: nn.Module, input_size: Sequence[int]) -> list[nn.Module]:
    """The nn.ReLU modules in the order a forward pass calls them (a module called twice appears twice)."""
    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m))
             for m in module.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return calls


def _trace_to_onnx(module: nn.Module, input_size: Sequence[int], opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript); it
        # still exports these models exactly, so its deprecation notice is noise for users.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, *input_size),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _inline_shared_initializers(graph: onnx.GraphProto) -> None:
    """Undo the exporter's initializer deduplication (Identity nodes fed by an initializer).

    Equal parameters, typically the all-zero biases of a randomly initialised model, come out as
    one initializer plus Identity nodes; every Conv/Gemm then reads its weights from an initializer
    of its own, which is what a graph compiler looking up layer weights expects.
    """
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new
    for vi in list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def _kind(graph: onnx.GraphProto, tensor: str) -> str:
    """"conv" or "fc" from the op that produces the ReLU's input (a residual Add: "conv")."""
    producer = {out: node for node in graph.node for out in node.output}.get(tensor)
    if producer is not None and producer.op_type in _FC_OPS:
        return "fc"
    if producer is not None and producer.op_type in ("Conv", "Add", "Sum"):
        return "conv"
    raise ValueError(f"tapped ReLU input {tensor!r} is produced by "
                     f"{producer.op_type if producer is not None else 'nothing'}, not Conv/Add/Gemm/MatMul")


def _name_layers(model: onnx.ModelProto, relu_calls: list[nn.Module],
                 taps: Sequence[tuple[str, nn.Module]]) -> list[dict[str, str]]:
    """Rename each tapped ReLU's output tensor to its layer name; return the metadata layer list.

    ONNX nodes come out of the tracer in forward order, like the hook order of the ReLU calls, so
    the i-th Relu node is the i-th ReLU call; counts are checked so a mismatch cannot go unnoticed.
    """
    graph = model.graph
    relu_nodes = [n for n in graph.node if n.op_type == "Relu"]
    if len(relu_nodes) != len(relu_calls):
        raise ValueError(f"the exported graph has {len(relu_nodes)} Relu nodes but the module made "
                         f"{len(relu_calls)} ReLU calls; cannot name the layers")
    taken = ({t.name for t in graph.initializer} | {t.name for t in graph.input}
             | {out for n in graph.node for out in n.output})
    layers = []
    for name, relu in taps:
        positions = [i for i, m in enumerate(relu_calls) if m is relu]
        if len(positions) != 1:
            raise ValueError(f"layer {name}: its ReLU module is called {len(positions)} times in forward "
                             "(a tap must be called exactly once)")
        node = relu_nodes[positions[0]]
        if name in taken or name in (INPUT_NAME, OUTPUT_NAME):
            raise ValueError(f"layer name {name!r} clashes with an existing name in the exported graph")
        kind = _kind(graph, node.input[0])
        _rename_tensor(graph, node.output[0], name)
        layers.append({"name": name, "tensor": name, "kind": kind})
    return layers


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] = (3, 224, 224),
    layer_names: Sequence[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    model_name: str = "model",
    info: dict[str, Any] | None = None,
    opset: int = 17,
) -> list[dict[str, str]]:
    """Export `module` (eval mode) to `path` with named layer tensors and cnnviz metadata.

    Taps are `module.taps()` ((name, nn.ReLU) pairs) when the module has it, else every ReLU call in
    forward order. `layer_names`, when given, must equal the tap names (or, without `taps`, name the
    ReLU calls in order). Returns the metadata layer list [{"name", "tensor", "kind"}].
    """
    module.eval()
    input_size = tuple(int(s) for s in input_size)
    relu_calls = _relu_call_order(module, input_size)
    if hasattr(module, "taps"):
        taps = list(module.taps())
        if layer_names is not None and list(layer_names) != [n for n, _ in taps]:
            raise ValueError(f"layer_names {list(layer_names)} differ from the module's taps {[n for n, _ in taps]}")
    else:
        if layer_names is None or len(layer_names) != len(relu_calls):
            raise ValueError(f"the module makes {len(relu_calls)} ReLU calls; give that many layer_names "
                             "or define module.taps()")
        taps = list(zip(layer_names, relu_calls))
    if len({n for n, _ in taps}) != len(taps):
        raise ValueError(f"duplicate layer names in {[n for n, _ in taps]}")

    model = _trace_to_onnx(module, input_size, opset)
    _inline_shared_initializers(model.graph)
    layers = _name_layers(model, relu_calls, taps)
    write_metadata(model, model=model_name, layers=layers, preprocess=preprocess,
                   labels=list(labels) if labels is not None else None, info=info)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return layers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_labels(labels: str | os.PathLike | Sequence[str], num_classes: int) -> list[str]:
    if isinstance(labels, (str, os.PathLike)):
        lines = Path(labels).read_text(encoding="utf-8").splitlines()
        labels = [line.strip() for line in lines if line.strip()]
    labels = list(labels)
    if len(labels) != num_classes:
        raise ValueError(f"labels: {len(labels)} given, the model has {num_classes} classes")
    return labels


def export_zoo(
    name: str,
    path: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    seed: int = 0,
    labels: str | os.PathLike | Sequence[str] | None = None,
) -> Path:
    """Export zoo model `name` to ONNX at `path`, with weights from a local file or random ones.

    Exactly one of `weights` (a .pth/.pt/.safetensors state dict) and `random_weights=True` must be
    given: a zoo file with untrained weights must never be made by accident. `labels` (a text file
    with one class name per line, or a list) is stored when given; the zoo ships no class names.
    """
    e = entry(name)
    if weights is None and not random_weights:
        raise ValueError(
            f"{name}: no weights given. Pass --weights FILE (a local .pth, .pt or "
            f".safetensors state dict with {e.key_layout} key names) or --random-weights for an "
            "untrained model (useful only for testing)")
    if weights is not None and random_weights:
        raise ValueError(f"{name}: give either --weights FILE or --random-weights, not both")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"{name}: weights file {weights} does not exist")
    label_list = _read_labels(labels, e.num_classes) if labels is not None else None

    torch.manual_seed(seed)
    model = build(name)
    info: dict[str, Any] = {"source": f"cnnviz_fast.zoo.{name}", "key_layout": e.key_layout,
                            "torch": torch.__version__, "exporter": "torch.onnx (TorchScript, dynamo=False)"}
    if weights is not None:
        weights = Path(weights)
        load_weights(model, weights, model_name=name)
        info.update(weights=weights.name, weights_sha256=_sha256(weights))
    else:
        info.update(weights=None, random_weights=True, seed=seed)

    path = Path(path)
    export_onnx(model, path, input_size=e.input_size, layer_names=e.layers, preprocess=e.preprocess,
                labels=label_list, model_name=name, info=info)
    return path


__all__ = ["export_onnx", "export_zoo", "INPUT_NAME", "OUTPUT_NAME"]
