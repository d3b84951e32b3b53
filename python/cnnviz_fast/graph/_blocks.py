"""Default layers of a DAG CNN (residual, Inception, dense, inverted-residual, ConvNeXt blocks) and
the activations of any net, found from the graph and named from its node names.

Cuts: tensors that every path from the image to the outputs passes through — the dominators of the
outputs in the tensor graph. A block's output is always one, and so is every tensor of a plain
chain, so cuts alone do not say where a block ends; the node names do. torch.onnx names a node by
its module path (`/layer1/layer1.0/conv1/Conv`, qualified here as `layer1.0.conv1`), so:

1. a join is a node with two or more inputs that carry full-size maps (residual Add, Inception or
   dense Concat) whose branches, back to the tensor that dominates it, hold a Conv, a pooling or a
   matrix product — an activation (SiLU's x·sigmoid(x), GELU's x·Φ(x)) is no join, nor is a
   squeeze-excitation gate (its second input is [N, C, 1, 1]);
2. the block of a join is the common module path of its branches (`layer1.0`), and its parent a
   container (`layer1`); `X.<i>` siblings of a container are containers too (timm's `blocks.0`
   holds one block without a skip, like `blocks.1` with skips);
3. the nodes between consecutive cuts (atoms) are grouped by their path cut one below the deepest
   container that holds them (`layer1.0`, `features.denseblock1`, `blocks.2.1`, `conv1`);
4. a group that holds a Conv is a layer, tapped at its last cut; a group of activations only
   (ResNet's stem ReLU) extends the group before it; other groups (pools, norms) are no layers.

A net without joins is a chain: its default stays the activation after each Conv (see _layers).
Unnamed graphs (no `/` paths) group per atom and name a layer after its last node.
"""
from __future__ import annotations

import re
from functools import reduce

from ._index import GraphIndex

UNARY = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
         "Tanh", "Softplus", "Softsign", "Erf", "Gelu", "Mish", "Clip", "ThresholdedRelu", "Abs", "Neg",
         "Exp", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
NONLINEAR = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
             "Tanh", "Softplus", "Softsign", "Erf", "Gelu", "Mish", "Clip", "ThresholdedRelu"}
_CONV = {"Conv", "ConvTranspose"}
_BRANCH_WORK = _CONV | {"MaxPool", "AveragePool", "LpPool", "Gemm", "MatMul"}
_INDEXED = re.compile(r"^(.*)\.\d+$")


def scope_path(name: str) -> list[str]:
    """Qualified module paths of a torch.onnx node name, outermost first:
    "/features/features.1/conv/conv.0/Conv" -> ["features", "features.1", "features.1.conv",
    "features.1.conv.0"]; a name not of that form has none."""
    if not name.startswith("/"):
        return []
    out, prev, q = [], None, ""
    for c in name.strip("/").split("/")[:-1]:
        q = q + c[len(prev):] if prev is not None and c.startswith(prev + ".") else (f"{q}.{c}" if q else c)
        out.append(q)
        prev = c
    return out


def _elementwise(idx: GraphIndex, i: int, region: set[str]) -> bool:
    """Node i is a per-element op whose image inputs all lie in `region` (others constant)."""
    node = idx.nodes[i]
    if node.op_type not in UNARY and node.op_type not in BINARY:
        return False
    for t in node.input:
        if t and t not in region and (t in idx.data or not idx.is_constant(t)):
            return False
    return True


def activation_root(idx: GraphIndex, t: str) -> str:
    """The tensor an activation feeding on `t` starts from: back through single-input per-element
    affine steps (GELU's x / sqrt(2)) to the output of the op before them."""
    for _ in range(8):
        i = idx.producer.get(t)
        if i is None or idx.nodes[i].op_type not in ("Div", "Mul", "Add", "Sub"):
            return t
        data = idx.data_inputs(i)
        if len(data) != 1 or not _elementwise(idx, i, set(data)):
            return t
        t = data[0]
    return t


def activation_from(idx: GraphIndex, x: str, limit: int = 16) -> tuple[int, str] | None:
    """(node index, output) of the activation applied to `x`: the largest run of per-element ops
    fed only by `x` and each other that holds a nonlinearity and ends in one tensor (ReLU, ReLU6,
    HardSwish, x·sigmoid(x), the erf form of GELU), or None."""
    region, members, best = {x}, set(), None
    nonlinear = False
    pending = set(idx.consumers.get(x, ()))
    for i in range(idx.producer.get(x, -1) + 1, len(idx.nodes)):
        if not pending or len(members) >= limit:
            break
        if i not in pending:
            continue
        if not _elementwise(idx, i, region):
            break
        node = idx.nodes[i]
        members.add(i)
        pending.discard(i)
        data = idx.data_inputs(i)
        nonlinear |= node.op_type in NONLINEAR or len(set(data)) > 1
        out = node.output[0]
        region.add(out)
        pending.update(idx.consumers.get(out, ()))
        open_ = [t for t in region if t in idx.outputs
                 or any(c not in members for c in idx.consumers.get(t, ()))]
        if nonlinear and open_ == [out]:
            best = (i, out)
    return best


def activations(idx: GraphIndex) -> list[tuple[int, str]]:
    """(node index, output tensor) of every activation of the graph, in forward order."""
    roots: dict[str, None] = {}
    for i, node in enumerate(idx.nodes):
        if node.op_type in NONLINEAR:
            data = idx.data_inputs(i)
            if data:
                roots[activation_root(idx, data[0])] = None
    found = {}
    for x in roots:
        hit = activation_from(idx, x)
        if hit is not None:
            found[hit[1]] = hit[0]
    return sorted(((i, t) for t, i in found.items()), key=lambda p: p[0])


def readable(idx: GraphIndex, i: int) -> str:
    """A node's module path ("layer1.0.relu"), else its name, else its output's."""
    path = scope_path(idx.nodes[i].name)
    return path[-1] if path else (idx.nodes[i].name or idx.nodes[i].output[0])


class _Dominators:
    """Immediate dominators of the image-dependent tensors (the graph is a DAG in node order)."""

    def __init__(self, idx: GraphIndex):
        self.idom: dict[str, str | None] = {idx.image: None}
        self.depth = {idx.image: 0}
        for i, node in enumerate(idx.nodes):
            ins = [t for t in idx.data_inputs(i) if t in self.depth]
            if not ins or not any(t in idx.data for t in node.output):
                continue
            d = reduce(self.lca, ins)
            for t in node.output:
                if t:
                    self.idom[t], self.depth[t] = d, self.depth[d] + 1

    def lca(self, a: str, b: str) -> str:
        while a != b:
            if self.depth[a] >= self.depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def chain(self, t: str) -> list[str]:
        out = []
        while t is not None:
            out.append(t)
            t = self.idom[t]
        return out[::-1]


def _between(idx: GraphIndex, start: list[str], stop: str) -> list[int]:
    """Nodes on the paths from `stop` (exclusive) to the tensors `start`, which it dominates."""
    seen, stack = set(), [idx.producer[t] for t in start if t != stop and t in idx.producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(idx.producer[t] for t in idx.data_inputs(i) if t != stop and t in idx.producer)
    return sorted(seen)


def _spatial_inputs(idx: GraphIndex, i: int) -> list[str]:
    """Distinct image inputs of node i that carry maps of its output's full spatial size."""
    out = idx.spatial(idx.nodes[i].output[0])
    data = list(dict.fromkeys(idx.data_inputs(i)))
    if out is None or out == (1, 1):
        return data
    return [t for t in data if idx.spatial(t) in (out, None)]


def _lcp(paths: list[list[str]]) -> list[str]:
    if not paths:
        return []
    first = paths[0]
    n = 0
    while n < len(first) and all(len(p) > n and p[n] == first[n] for p in paths):
        n += 1
    return first[:n]


def block_layers(idx: GraphIndex) -> list[tuple[str, str]] | None:
    """(name, tensor) of the default layers of a DAG net, or None for a chain (no joins)."""
    dom = _Dominators(idx)
    outs = [t for t in idx.outputs if t in dom.depth]
    if not outs:
        return None
    cuts = dom.chain(reduce(dom.lca, outs))
    paths = {i: scope_path(n.name) for i, n in enumerate(idx.nodes)}
    joins, containers = [], set()
    for i in range(len(idx.nodes)):
        spatial = _spatial_inputs(idx, i)
        if len(spatial) < 2:
            continue
        region = _between(idx, spatial, reduce(dom.lca, spatial))
        if not any(idx.nodes[r].op_type in _BRANCH_WORK for r in region):
            continue
        joins.append(i)
        scope = _lcp([paths[r] for r in region + [i]])
        if scope:
            containers.add(tuple(scope[:-1]))
    if not joins:
        return None

    # Which child scopes each scope has, and whether each holds a Conv.
    children: dict[tuple, dict[str, bool]] = {}
    for i, path in paths.items():
        conv = idx.nodes[i].op_type in _CONV
        for d in range(len(path)):
            kids = children.setdefault(tuple(path[:d]), {})
            kids[path[d]] = kids.get(path[d], False) or conv

    def is_container(prefix: tuple) -> bool:
        if prefix in containers:
            return True
        # `X.<i>` beside a container `X.<j>`, holding Conv blocks only (timm's one-block stages),
        # not a stem or downsampling Sequential of a norm and a conv.
        m = _INDEXED.match(prefix[-1]) if prefix else None
        kids = children.get(prefix, {})
        return bool(m) and bool(kids) and all(kids.values()) and any(
            len(c) == len(prefix) and c[:-1] == prefix[:-1] and
            (mc := _INDEXED.match(c[-1])) is not None and mc.group(1) == m.group(1) for c in containers)

    def key(path: list[str]):
        if not path:
            return None
        depth = max((d for d in range(len(path)) if is_container(tuple(path[:d]))), default=None)
        if depth is None:
            depth = max((len(_lcp([path, list(c)])) for c in containers), default=0)
        return tuple(path[:depth + 1])

    join_set = set(joins)
    atoms = []
    for k in range(1, len(cuts)):
        atom = _between(idx, [cuts[k]], cuts[k - 1])
        if atom:
            atoms.append((cuts[k], atom, key(_lcp([paths[i] for i in atom]))))
    groups: list[dict] = []
    for n, (tensor, atom, kk) in enumerate(atoms):
        conv = any(idx.nodes[i].op_type in _CONV for i in atom) or bool(join_set.intersection(atom))
        act = all(_elementwise(idx, i, idx.data) for i in atom) and any(
            idx.nodes[i].op_type in NONLINEAR or len(set(idx.data_inputs(i))) > 1 for i in atom)
        opens_block = kk is not None and n + 1 < len(atoms) and atoms[n + 1][2] == kk
        if groups and kk is not None and groups[-1]["key"] == kk:
            g = groups[-1]
            g["conv"] |= conv
        elif groups and act and not conv and not opens_block:
            g = groups[-1]  # an activation after a group (ResNet's stem ReLU) belongs to it
        else:
            g = {"key": kk, "conv": conv}
            groups.append(g)
        g["tensor"], g["last"] = tensor, atom[-1]
    out, names = [], set()
    for g in groups:
        shape = idx.shape(g["tensor"])
        if not g["conv"] or shape is None or len(shape) != 4 or idx.spatial(g["tensor"]) is None:
            continue
        name = g["key"][-1] if g["key"] else readable(idx, g["last"])
        if name in names:
            name = g["tensor"]
        names.add(name)
        out.append((name, g["tensor"]))
    return out
