"""Sub-graphs of a model: pruning to chosen outputs, and the mining graph's heads.

Mining heads ("graph"): per layer, Reshape [N, C, H, W] -> [N, C, H*W] (an aliasing view in ORT),
ReduceMax over the last axis -> `<layer>:max` float32 [N, C], ArgMax over the same axis with
select_last_index=0 (the first maximum in row-major order, position y*W + x) cast to int32 ->
`<layer>:argmax` [N, C]. fc layers ([N, C]) go through the same heads (position 0).

NaN: ONNX Runtime's CPU ReduceMax / ArgMax neither propagate nor ignore NaN consistently: a NaN
in a map's first position makes the result NaN (argmax 0), a NaN elsewhere is skipped (measured
with ORT 1.31; tests pin only the invariant below). The native `unit_max` ignores NaN always.
Both keep the invariant that matters: a head is either NaN or the max of the map's numbers, and
the native top-k merge refuses NaN scores, so a NaN never enters the results. With graph heads
such an image may not count for a unit whose map holds a NaN; with native heads it does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._index import GraphIndex

HEADS = ("graph", "native")


def prune(idx: GraphIndex, outputs: Sequence[str], extra_nodes: Sequence[onnx.NodeProto] = (),
          extra_initializers: Sequence[onnx.TensorProto] = (),
          output_infos: Sequence[onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    """A model computing only what `outputs` need from the image (plus `extra_nodes` after it).

    Graph outputs are `output_infos` when given, else `outputs` typed from inferred shapes.
    """
    needed = set(outputs)
    for node in extra_nodes:
        needed.update(t for t in node.input if t)
    keep = []
    for i in range(len(idx.nodes) - 1, -1, -1):
        node = idx.nodes[i]
        if any(t in needed for t in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    keep.reverse()
    src = idx.model
    g = onnx.GraphProto(name=(src.graph.name or "model") + "_cnnviz")
    g.node.extend(keep)
    g.node.extend(extra_nodes)
    g.initializer.extend(t for t in src.graph.initializer if t.name in needed)
    g.initializer.extend(extra_initializers)
    g.input.extend(i for i in src.graph.input if i.name == idx.image)
    g.output.extend(output_infos if output_infos is not None else [value_info(idx, t) for t in outputs])
    g.value_info.extend(v for v in src.graph.value_info if v.name in needed)
    model = onnx.ModelProto(ir_version=src.ir_version, producer_name="cnnviz_fast", graph=g)
    model.opset_import.extend(src.opset_import)
    model.functions.extend(src.functions)
    return model


def value_info(idx: GraphIndex, tensor: str, name: str | None = None,
               elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    shape = idx.shape(tensor)
    dims = None if shape is None else [d if d is not None else "?" for d in shape]
    return helper.make_tensor_value_info(name or tensor, elem, dims)


def mining_graph(idx: GraphIndex, layers, heads: str = "graph") -> onnx.ModelProto:
    """The model pruned to `layers` (a sequence of Layer), with mining heads or raw taps as outputs."""
    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, not {heads!r}")
    tensors = list(dict.fromkeys(layer.tensor for layer in layers))
    if heads == "native":
        return prune(idx, tensors)
    shape_name, axes_name = "cnnviz_mining_flat_shape", "cnnviz_mining_axes"
    inits = [numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape_name)]
    if idx.opset >= 18:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), axes_name))
    nodes, infos = [], []
    for k, layer in enumerate(layers):
        flat, first = f"cnnviz_flat_{k}", f"cnnviz_argmax64_{k}"
        nodes.append(helper.make_node("Reshape", [layer.tensor, shape_name], [flat], f"cnnviz_flat_{k}"))
        if idx.opset >= 18:
            nodes.append(helper.make_node("ReduceMax", [flat, axes_name], [layer.max_output],
                                          f"cnnviz_max_{k}", keepdims=0))
        else:
            nodes.append(helper.make_node("ReduceMax", [flat], [layer.max_output], f"cnnviz_max_{k}",
                                          axes=[2], keepdims=0))
        argmax_attrs = {"axis": 2, "keepdims": 0}
        if idx.opset >= 12:
            argmax_attrs["select_last_index"] = 0
        nodes.append(helper.make_node("ArgMax", [flat], [first], f"cnnviz_argmax_{k}", **argmax_attrs))
        nodes.append(helper.make_node("Cast", [first], [layer.argmax_output], f"cnnviz_cast_{k}",
                                      to=TensorProto.INT32))
        batch = (idx.shape(layer.tensor) or ("N",))[0]
        infos.append(helper.make_tensor_value_info(layer.max_output, TensorProto.FLOAT, [batch, layer.units]))
        infos.append(helper.make_tensor_value_info(layer.argmax_output, TensorProto.INT32,
                                                   [batch, layer.units]))
    return prune(idx, [], nodes, inits, infos)
