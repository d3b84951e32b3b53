"""Layers (tapped tensors): discovery from metadata or the graph (chains here, blocks and
activations of other nets in `_blocks`), names, receptive-field boxes."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ._blocks import activation_from, activations, block_layers, readable
from ._index import GraphIndex
from ._receptive import Blocked, Field
from .errors import InvalidModel, UnsupportedOp

Box = tuple[int, int, int, int]

# Single-consumer ops between a Conv (or Gemm) and its ReLU that do not change which ReLU it is.
_BETWEEN = {"BatchNormalization", "Add", "Sub", "Mul", "Div", "Identity", "Dropout"}


@dataclass(eq=False)
class Layer:
    """A tapped tensor and the geometry of its units.

    `name` is the layer's name (zoo: conv1…, fc6…, layer1.0…; a foreign chain: the activation
    node's name, or its output tensor's when the node has none; other nets: the module path of
    the block or activation, e.g. `layer1.0`, `features.denseblock1.denselayer1.relu1`); `tensor` the ONNX tensor; `kind` "conv" or "fc"; `units`
    the channel count C; `map_shape` (H, W) at the model's input size ((1, 1) for fc layers);
    `input_hw` the model input's (H, W). Receptive fields per axis (h, w): `rf_size` R, `rf_stride`
    (the jump between neighbouring positions, in input pixels) and `rf_start` (input coordinate of
    position 0's box, may be negative). These raise `UnsupportedOp` when an op on the way has no
    known geometry.
    """

    name: str
    tensor: str
    kind: str
    units: int
    map_shape: tuple[int, int]
    input_hw: tuple[int, int]
    _field: Field | None = field(default=None, repr=False)
    _error: UnsupportedOp | None = field(default=None, repr=False)

    @property
    def rf_size(self) -> tuple[int, int]:
        return self._rf().size

    @property
    def rf_stride(self) -> tuple[int, int]:
        return self._rf().jump

    @property
    def rf_start(self) -> tuple[int, int]:
        return self._rf().start

    @property
    def covers_whole_input(self) -> bool:
        """True when every unit sees the whole image (after Flatten, Gemm, global pooling)."""
        return self._rf().whole

    @property
    def max_output(self) -> str:
        """Name of the mining graph's per-(image, unit) maximum output for this layer."""
        return f"{self.name}:max"

    @property
    def argmax_output(self) -> str:
        """Name of the mining graph's first-maximum position output (int32, y * W + x)."""
        return f"{self.name}:argmax"

    @property
    def slug(self) -> str:
        """The name made safe as a file or folder name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("._") or "layer"

    def receptive_field(self, y: int, x: int) -> Box:
        """Unclipped box (top, left, bottom, right), half-open, in input pixels, of position (y, x)."""
        f = self._rf()
        if f.whole:
            return 0, 0, self.input_hw[0], self.input_hw[1]
        top, left = f.start[0] + y * f.jump[0], f.start[1] + x * f.jump[1]
        return top, left, top + f.size[0], left + f.size[1]

    def clip(self, box: Box) -> Box:
        """`box` clipped to the input image."""
        h, w = self.input_hw
        top, left, bottom, right = box
        return max(top, 0), max(left, 0), min(bottom, h), min(right, w)

    def _rf(self) -> Field:
        if self._error is not None:
            raise self._error
        assert self._field is not None
        return self._field


def discover(idx: GraphIndex, metadata_layers: list | None, fields: dict,
             shape_of: Callable[[str], tuple]) -> tuple[list[Layer], list[Layer]]:
    """(all named layers, the default ones), both in forward order.

    From `cnnviz.layers` metadata when the file has it (defaults: its conv layers); else for a
    chain the activation after each Conv (defaults) and after each Gemm; else (a DAG) the blocks
    of `_blocks.block_layers` (defaults) and every activation.
    """
    if metadata_layers:
        specs = []
        for entry in metadata_layers:
            if entry["tensor"] not in idx.data:
                raise InvalidModel(f"metadata layer {entry['name']!r} names tensor {entry['tensor']!r}, "
                                   "which the graph does not compute")
            specs.append((entry["name"], entry["tensor"], entry.get("kind", "conv")))
        layers = make_layers(idx, specs, fields, shape_of)
        return layers, [layer for layer in layers if layer.kind == "conv"]
    blocks = block_layers(idx)
    if blocks is None:
        layers = make_layers(idx, _from_graph(idx), fields, shape_of)
        return layers, [layer for layer in layers if layer.kind == "conv"]
    specs = {tensor: (name, tensor, "conv") for name, tensor in blocks}
    names = {name for name, _ in blocks}
    for i, tensor in activations(idx):
        shape = idx.shape(tensor)
        if tensor in specs or shape is None or len(shape) not in (2, 4):
            continue
        name = readable(idx, i)
        if name in names:
            name = tensor
        names.add(name)
        specs[tensor] = (name, tensor, "conv" if len(shape) == 4 else "fc")
    order = sorted(specs.values(), key=lambda spec: idx.producer[spec[1]])
    layers = make_layers(idx, order, fields, shape_of)
    default = {tensor for _, tensor in blocks}
    return layers, [layer for layer in layers if layer.tensor in default]


def make_layers(idx: GraphIndex, specs: list[tuple[str, str, str]], fields: dict,
                shape_of: Callable[[str], tuple]) -> list[Layer]:
    """Layers for (name, tensor, kind) triples; receptive-field errors name every blocked layer."""
    layers = []
    for name, tensor, kind in specs:
        shape = shape_of(tensor)
        if len(shape) == 4:
            units, hw = shape[1], (shape[2], shape[3])
        elif len(shape) == 2:
            units, hw = shape[1], (1, 1)
        else:
            raise ValueError(f"tensor {tensor!r} has shape {list(shape)}; a layer must be "
                             "[N, C, H, W] or [N, C]")
        layers.append(Layer(name, tensor, kind, int(units), tuple(map(int, hw)),
                            _input_hw(idx)))
    blocked_by: dict[Blocked, list[Layer]] = {}
    for layer in layers:
        f = fields.get(layer.tensor)
        if isinstance(f, Blocked):
            blocked_by.setdefault(f, []).append(layer)
        else:
            layer._field = f
    for b, group in blocked_by.items():
        err = UnsupportedOp(b.node, b.op_type, [g.name for g in group], "receptive field", b.reason)
        for layer in group:
            layer._error = err
    return layers


def _input_hw(idx: GraphIndex) -> tuple[int, int]:
    return idx.spatial(idx.image)


def _from_graph(idx: GraphIndex) -> list[tuple[str, str, str]]:
    """(name, tensor, kind) for the ReLU after each Conv ("conv") and each Gemm/MatMul ("fc")."""
    found: list[tuple[int, str]] = []
    seen: set[int] = set()
    for node in idx.nodes:
        if node.op_type == "Conv":
            kind = "conv"
        elif node.op_type in ("Gemm", "MatMul"):
            kind = "fc"
        else:
            continue
        if node.output[0] not in idx.data:
            continue
        relu = _relu_after(idx, node.output[0])
        if relu is None:  # another activation (SiLU, HardSwish, GELU, ...) takes the ReLU's place
            hit = activation_from(idx, node.output[0])
            relu = hit[0] if hit is not None else None
        if relu is not None and relu not in seen:
            seen.add(relu)
            found.append((relu, kind))
    specs, names = [], set()
    for relu, kind in found:
        node = idx.nodes[relu]
        name = node.name or node.output[0]
        if name in names:
            name = node.output[0]
        names.add(name)
        specs.append((name, node.output[0], kind))
    return specs


def _relu_after(idx: GraphIndex, t: str) -> int | None:
    for _ in range(8):
        users = idx.consumers.get(t, [])
        relu = next((u for u in users if idx.nodes[u].op_type == "Relu"), None)
        if relu is not None:
            return relu
        if len(users) != 1 or idx.nodes[users[0]].op_type not in _BETWEEN:
            return None
        t = idx.nodes[users[0]].output[0]
    return None
