"""The one ONNX builder for the graphs cnnviz_fast makes itself (reverse segments, projector helpers).

One version table: every such graph is opset `OPSET` (ai.onnx) and IR version `IR_VERSION`, which
every ONNX Runtime the project supports loads. `Builder` hands out fresh tensor names, constants
and nodes; `make_model` wraps a graph into a model with the table's versions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[onnx.TensorProto] = (),
               name: str = "cnnviz") -> onnx.ModelProto:
    """A model of these parts at opset `OPSET`, IR version `IR_VERSION`."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cnnviz_fast")
    model.ir_version = IR_VERSION
    return model


class Builder:
    """Nodes, initializers and inputs of one graph under construction, with fresh names."""

    def __init__(self, prefix: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._prefix = prefix
        self._n = 0

    def fresh(self, prefix: str = "t") -> str:
        self._n += 1
        return f"{self._prefix}{prefix}{self._n}"

    def input(self, name: str, dtype: int, shape: list | None) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, value, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Add one node with a single output (named `out`, or a fresh name); return the output."""
        out = out or self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], self.fresh(op + "_"), **attrs))
        return out

    def nodes_multi(self, op: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        """Add one node with `n_out` outputs; return their names."""
        outs = [self.fresh() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, self.fresh(op + "_"), **attrs))
        return outs

    def model(self, outputs: list[tuple[str, int]], name: str = "cnnviz") -> onnx.ModelProto:
        """The graph with these (name, element type) outputs, shapes left to ONNX Runtime."""
        outs = [helper.make_tensor_value_info(n, dtype, None) for n, dtype in outputs]
        return make_model(self.nodes, self.inputs, outs, self.inits, name)


def run_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int,
             initializers: Sequence[onnx.TensorProto] = ()) -> list[np.ndarray]:
    """Run one forward node of a model (at the model's own `opset`, so its attributes mean what
    they meant there) on the CPU with ONNX Runtime; `feeds` name its non-constant inputs."""
    from onnx import TensorProto

    from ..runtime import session

    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in node.output if t]
    graph = helper.make_graph([node], "cnnviz_node", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, IR_VERSION)
    return session(model, "cpu", what=f"a {node.op_type} probe").run(None, feeds)
