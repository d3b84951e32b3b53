"""Folding BatchNormalization into the Conv that feeds it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold every foldable Conv -> BatchNormalization pair of `model` in place; return the count.

    A pair folds when the Conv output feeds only the BN (and is no graph output), the Conv weight,
    bias and all BN parameters are constants, and the BN runs in inference mode. Then
    W' = W * s and b' = (b - mean) * s + beta with s = scale / sqrt(var + eps) per output
    channel, and the Conv writes the BN's output. Other BNs stay; the reverse plan treats them as
    a per-channel scale.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    producer = {t: n for n in g.node for t in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None

    folded = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
        conv = producer.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or attrs.get("training_mode", 0)
                or uses.get(bn.input[0], 0) != 1 or bn.input[0] in outputs
                or any(t for t in bn.output[1:])):
            continue
        params = [const(t) for t in bn.input[1:5]]
        w = const(conv.input[1])
        b = const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else 0.0
        if w is None or b is None or any(p is None for p in params):
            continue
        scale, beta, mean, var = params
        s = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        w_name = _fresh(inits, conv.input[1] + "_bnfold")
        b_name = _fresh(inits, conv.output[0] + "_bias_bnfold")
        for name, value in ((w_name, w * s.reshape(-1, *([1] * (w.ndim - 1)))),
                            (b_name, (b - mean) * s + beta)):
            t = numpy_helper.from_array(value.astype(np.float32), name)
            g.initializer.append(t)
            inits[name] = t
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        g.node.remove(bn)
    if folded:
        _drop_unused_initializers(g)
    return len(folded)


def _fresh(taken: dict, name: str) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}{k}"
    return out


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    dropped = set()
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name not in used:
            dropped.add(g.initializer[i].name)
            del g.initializer[i]
    for i in reversed(range(len(g.input))):
        if g.input[i].name in dropped:
            del g.input[i]


# Ops whose value is not a function of their inputs; never folded.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli"}


def fold_constants(model: onnx.ModelProto) -> int:
    """Replace every node that does not depend on a graph input by initializers, in place.

    Exporters compute small things in the graph (the pads of a Pad, a Reshape target, a transposed
    weight); as initializers they can be read without running anything. Returns the number of
    nodes removed; leaves the graph alone when the reference evaluator cannot run the subgraph.
    """
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    known = {t.name for t in g.initializer}
    const_idx = []
    for i, node in enumerate(g.node):
        if (node.op_type in _NOT_FOLDABLE or node.domain not in ("", "ai.onnx")
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                       for a in node.attribute)):
            continue
        if all(not t or t in known for t in node.input):
            const_idx.append(i)
            known.update(t for t in node.output if t)
    if not const_idx:
        return 0
    chosen = set(const_idx)
    produced = [t for i in const_idx for t in g.node[i].output if t]
    used = {t for i, n in enumerate(g.node) if i not in chosen for t in n.input} | {o.name for o in g.output}
    frontier = [t for t in produced if t in used]
    needed = {t for i in const_idx for t in g.node[i].input}
    sub = onnx.helper.make_graph([g.node[i] for i in const_idx], "constants", [],
                                 [onnx.helper.make_empty_tensor_value_info(t) for t in frontier],
                                 [t for t in g.initializer if t.name in needed])
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    try:
        values = ReferenceEvaluator(sub_model).run(None, {}) if frontier else []
    except Exception:  # an op the reference evaluator lacks: ORT will fold it at session time
        return 0
    for i in sorted(chosen, reverse=True):
        del g.node[i]
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), t) for t, v in zip(frontier, values))
    _drop_unused_initializers(g)
    return len(const_idx)
