"""The forward half of a projection: one image batch through the projection graph, once.

`Forward` keeps, on the device, what the reverse passes of that batch read — and nothing else: the
tapped tensors (seed values), the switches of every MaxPool on the way (native `switch_pool`,
uint8, recorded once per image however many seeds use them), in guided / gradient mode the ReLU
outputs, and the forward values the true local adjoints of a graph plan read (sigmoid gates, SiLU
and LayerNorm inputs, ...). For chain plans, switches and ReLU outputs are kept channels-last with
one fill row (see `_graphs.prep_graph`), so any seed's window of them is one gather; full-frame
graph plans gather whole maps by image. Switches are recorded right after the forward, and a
MaxPool input nothing else reads (deconvnet mode) is then let go (`switch_sources`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import UnsupportedOp, Unpool


class Forward:
    """Forward results of `images` images for `layers` (make them with `Projector.forward`; any
    projector of the same model on the same device can use them)."""

    def __init__(self, projector, images: int, values: dict, layers: list[str]):
        self._projector = projector
        self.model = projector.model
        self.device = projector.device.name
        self.images = images
        self.layers = layers
        self.values = values
        self._sources: dict[str, object] = {}
        self._switches: dict[tuple, object] = {}

    def source(self, tensor: str):
        """`tensor` as rows [N*H*W + 1, C] (fill 0), prepared on first use."""
        if tensor not in self._sources:
            self._sources[tensor] = self._prep(self.values[tensor], TensorProto.FLOAT, 0.0)
        return self._sources[tensor]

    def switches(self, step: Unpool):
        """Switches of `step`'s MaxPool as rows [N*OH*OW + 1, C] (fill 255), made on first use."""
        key = (step.input_tensor, step.kernel, step.strides, step.pads, step.dilations, step.ceil_mode)
        if key not in self._switches:
            raw = self._switches.get(("raw", *key))
            if raw is None:  # made for this only, not kept
                raw = self._projector.device.switches(self.values[step.input_tensor], step.kernel, step.strides,
                                                      step.pads, step.dilations, step.ceil_mode)
            self._switches[key] = self._prep(raw, TensorProto.UINT8, 255)
        return self._switches[key]

    def raw_switches(self, step: Unpool):
        """Switches of `step`'s MaxPool as [N, C, OH, OW] uint8, recorded on first use."""
        key = ("raw", step.input_tensor, step.kernel, step.strides, step.pads, step.dilations, step.ceil_mode)
        if key not in self._switches:
            self._switches[key] = self._projector.device.switches(
                self.values[step.input_tensor], step.kernel, step.strides, step.pads, step.dilations,
                step.ceil_mode)
        return self._switches[key]

    def record(self, pools: list[Unpool], drop: set[str]) -> None:
        """Record the switches of `pools` now and let go of the forward tensors in `drop` (MaxPool
        inputs that nothing but their switches reads: in deconvnet mode, e.g. a stem's ReLU output)."""
        for step in pools:
            self.raw_switches(step)
        for t in drop:
            self.values.pop(t, None)

    @property
    def held_bytes(self) -> int:
        """Bytes of the forward tensors and switches this batch holds now."""
        return sum(int(np.prod(v.shape())) * 4 for v in self.values.values()) + self.switch_bytes

    @property
    def switch_bytes(self) -> int:
        """Bytes of the switches held now (uint8; int64 indices would take 8x)."""
        return sum(int(np.prod(v.shape())) for v in self._switches.values())

    def _prep(self, value, dtype: int, fill):
        shape = value.shape()
        sess = self._projector._prep_session(shape[1], len(shape) == 4, dtype, fill)
        return self._projector.device.run(sess, {"x": value}, ["y"])[0]


def switch_sources(model, layers: list, mode: str) -> tuple[list[Unpool], set[str]]:
    """The MaxPools (Unpool steps) of `layers`' graph plans, and the forward tensors that are read
    only as the inputs of those MaxPools in `mode`, so may go once their switches are recorded
    (whole maps: the form both full-frame and windowed graph passes start from). Chain plans keep
    their MaxPool inputs and record their switches on first use, as before."""
    pools: dict[tuple, Unpool] = {}
    needed: set[str] = set()
    for layer in layers:
        needed.add(layer.tensor)
        try:
            plan = model.reverse_plan(layer)
        except UnsupportedOp:
            continue
        needed.update(plan.local_tensors)
        if mode != "deconvnet":
            needed.update(plan.relu_tensors)
        if plan.is_chain:
            needed.update(plan.switch_tensors)
            continue
        for step in plan.steps:
            if isinstance(step, Unpool):
                pools.setdefault((step.input_tensor, step.kernel, step.strides, step.pads, step.dilations,
                                  step.ceil_mode), step)
    steps = list(pools.values())
    return steps, {s.input_tensor for s in steps} - needed


def forward_graphs(model, layers: list, mode: str) -> list[tuple[onnx.ModelProto, list[str]]]:
    """Forward graphs (with their outputs) covering every tensor the plans of `layers` read in
    `mode` (`ReversePlan.forward_tensors`).

    A layer without a reverse plan gets its tapped tensor only. For a chain CNN one graph does: the deepest layer's projection graph computes every earlier
    layer's tensors too, which are added as outputs. Layers it does not cover get their own. Each
    graph's outputs are exactly the tensors asked for.
    """
    needs, protos = {}, {}
    for layer in layers:
        try:
            needs[layer.name] = model.reverse_plan(layer).forward_tensors(mode)
            protos[layer.name] = model.projection_graph(layer)
        except UnsupportedOp:  # no projection: the tapped values alone (patches, checks)
            needs[layer.name] = [layer.tensor]
            protos[layer.name] = model.mining_graph([layer], heads="native")
    pending = sorted(layers, key=lambda layer: -len(protos[layer.name].graph.node))
    graphs = []
    while pending:
        base, rest = pending[0], []
        proto = protos[base.name]
        produced = {t for node in proto.graph.node for t in node.output}
        outputs = list(needs[base.name])
        for layer in pending[1:]:
            if all(t in produced for t in needs[layer.name]):
                outputs += [t for t in needs[layer.name] if t not in outputs]
            else:
                rest.append(layer)
        graphs.append((_only_outputs(proto, outputs), outputs))
        pending = rest
    return graphs


def _only_outputs(proto: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """`proto` with exactly `outputs` as graph outputs and only the nodes they need."""
    g = proto.graph
    needed = set(outputs)
    keep = []
    for node in reversed(g.node):
        if any(t in needed for t in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    keep.reverse()
    typed = {o.name: o for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.output[:]
    g.output.extend(typed[t] if t in typed else helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                    for t in outputs)
    used = needed | set(outputs)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    return proto
