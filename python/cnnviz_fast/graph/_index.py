"""A read-only index over an ONNX graph: producers, consumers, constants, shapes, data flow."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Outputs of these ops carry shapes, not image data: a Reshape whose target is computed from
# Shape(x) still has one data input.
_SHAPE_OPS = {"Shape", "Size"}


@dataclass(frozen=True)
class PoolGeometry:
    """2-D window geometry of a Conv or pooling node, auto_pad resolved.

    pads are (top, left, bottom, right); in_hw / out_hw the spatial sizes around the node.
    """

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    ceil_mode: bool
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def effective_kernel(self) -> tuple[int, int]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations))


class GraphIndex:
    """Index of `model.graph` (nodes in the graph's topological order).

    `image` is the image input's name. Node names are made unique and non-empty in `names`
    (an unnamed node gets "<OpType>_<index>").
    """

    def __init__(self, model: onnx.ModelProto, image: str):
        g = model.graph
        self.model = model
        self.image = image
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.nodes = list(g.node)
        self.names = _unique_names(self.nodes)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for t in node.output:
                if t:
                    self.producer[t] = i
            for t in node.input:
                if t:
                    self.consumers[t].append(i)
        self._initializers = {t.name: t for t in g.initializer}
        self._constants: dict[str, np.ndarray] = {}
        self.shapes = _shapes(g)
        self.outputs = [o.name for o in g.output]
        self.data = self._data_tensors()

    def attrs(self, i: int) -> dict[str, Any]:
        """Attributes of node i as Python values (strings decoded)."""
        out = {}
        for a in self.nodes[i].attribute:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    def is_constant(self, name: str) -> bool:
        if name in self._initializers:
            return True
        i = self.producer.get(name)
        return i is not None and self.nodes[i].op_type == "Constant"

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output, else None.

        Small values are cached; large ones (weights) are converted on each call rather than
        kept twice in memory.
        """
        if name in self._constants:
            return self._constants[name]
        if name in self._initializers:
            value = numpy_helper.to_array(self._initializers[name])
        elif self.is_constant(name):
            a = self.attrs(self.producer[name])
            if "value" not in a:
                return None
            value = numpy_helper.to_array(a["value"])
        else:
            return None
        if value.size <= 4096:
            self._constants[name] = value
        return value

    def data_inputs(self, i: int) -> list[str]:
        """Inputs of node i that carry image data."""
        return [t for t in self.nodes[i].input if t in self.data]

    def shape(self, name: str) -> tuple | None:
        """Inferred shape (ints, strings for symbolic dims, None for unknown dims) or None."""
        return self.shapes.get(name)

    def spatial(self, name: str) -> tuple[int, int] | None:
        s = self.shape(name)
        if s is None or len(s) != 4 or not all(isinstance(d, int) for d in s[2:]):
            return None
        return int(s[2]), int(s[3])

    def ancestors(self, name: str) -> set[int]:
        """Indices of the nodes `name` depends on (through any input)."""
        seen: set[int] = set()
        stack = [name]
        while stack:
            i = self.producer.get(stack.pop())
            if i is None or i in seen:
                continue
            seen.add(i)
            stack.extend(t for t in self.nodes[i].input if t)
        return seen

    def geometry(self, i: int) -> PoolGeometry:
        """Window geometry of Conv / MaxPool / AveragePool / LpPool node i on 4-D data."""
        node, a = self.nodes[i], self.attrs(i)
        x = node.input[0]
        in_hw = self.spatial(x)
        if in_hw is None:
            raise ValueError(f"node {self.names[i]!r}: input {x!r} has no known 4-D shape")
        if node.op_type == "Conv":
            w = self.shape(node.input[1])
            kernel = tuple(a.get("kernel_shape", w[2:] if w else ()))
        else:
            kernel = tuple(a["kernel_shape"])
        if len(kernel) != 2:
            raise ValueError(f"node {self.names[i]!r}: only 2-D windows are supported")
        strides = tuple(a.get("strides", (1, 1)))
        dil = tuple(a.get("dilations", (1, 1)))
        ceil = bool(a.get("ceil_mode", 0))
        eff = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for ax in range(2):
                out = -(-in_hw[ax] // strides[ax])
                total = max((out - 1) * strides[ax] + eff[ax] - in_hw[ax], 0)
                small, big = total // 2, total - total // 2
                pads[ax], pads[ax + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        else:
            pads = list(a.get("pads", (0, 0, 0, 0)))
        out_hw = self.spatial(node.output[0]) or tuple(
            _pool_out(in_hw[ax], eff[ax], strides[ax], pads[ax], pads[ax + 2], ceil) for ax in range(2))
        return PoolGeometry(tuple(map(int, kernel)), tuple(map(int, strides)), tuple(map(int, pads)),
                            tuple(map(int, dil)), ceil, in_hw, tuple(map(int, out_hw)))

    def _data_tensors(self) -> set[str]:
        data = {self.image}
        for node in self.nodes:
            if node.op_type in _SHAPE_OPS:
                continue
            if any(t in data for t in node.input if t):
                data.update(t for t in node.output if t)
        return data


def _pool_out(size: int, eff: int, stride: int, pb: int, pe: int, ceil: bool) -> int:
    span = size + pb + pe - eff
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pb:
        out -= 1  # the last window may not start in the end padding (PyTorch and ORT agree)
    return out


def _unique_names(nodes) -> list[str]:
    names, seen = [], set()
    for i, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}#{k}"
        seen.add(name)
        names.append(name)
    return names


def _shapes(g: onnx.GraphProto) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[vi.name] = tuple(dims)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out
