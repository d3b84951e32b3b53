"""A node order for ONNX Runtime that finishes side branches (graph outputs, heads) first.

Why: ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and inserts a
ReorderOutput node wherever a tensor leaves that layout, graph outputs included. It creates those
nodes last, and its default order (a depth-first walk from the leaves by node index) then runs the
reorder of every tapped map at the end of the graph. Two costs follow (measured on ResNet-50's 17
default taps, benchmarks/mining.py): every tapped map is kept alive in the blocked layout until the
end, so a batch's arena grows by all of them; and a residual convolution cannot accumulate in place
into a block output that a later reorder still reads, so it copies it first. Together they made a
mining forward about 1.2x the plain graph's time.

`schedule_branches_first` orders the nodes topologically, taking among the nodes ready to run the
one with the fewest descendants (ties: the original order). A reorder feeding only a graph output
has none, so it runs right after the tensor it reads is computed. runtime.session(...,
branches_first=True) applies it to ONNX Runtime's own optimised graph and runs that graph in this
order (ExecutionOrder.PRIORITY_BASED keeps a topologically sorted file order: Kahn's algorithm,
lowest node index first). The order changes no arithmetic: every node computes what it did.
"""
from __future__ import annotations

import heapq

import onnx


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node carries a subgraph (If, Loop, Scan): its reads of outer tensors are implicit,
    so the edges below would not see them."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute)


def schedule_branches_first(graph: onnx.GraphProto) -> list[int]:
    """The indices of `graph.node` in the order described in the module docstring."""
    nodes = list(graph.node)
    producer = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = i
    succ: list[set[int]] = [set() for _ in nodes]
    indegree = [0] * len(nodes)
    for i, node in enumerate(nodes):
        preds = {producer[name] for name in node.input if name in producer and producer[name] != i}
        indegree[i] = len(preds)
        for p in preds:
            succ[p].add(i)
    order = _kahn(len(nodes), succ, list(indegree), key=lambda i: (0, i))  # any topological order
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    below = [0] * len(nodes)  # descendants of each node, as a bit set
    for i in reversed(order):
        bits = 0
        for j in succ[i]:
            bits |= below[j] | (1 << j)
        below[i] = bits
    count = [b.bit_count() for b in below]
    return _kahn(len(nodes), succ, indegree, key=lambda i: (count[i], i))


def reorder_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its main graph's nodes in `schedule_branches_first` order (in place)."""
    graph = model.graph
    order = schedule_branches_first(graph)
    nodes = [graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return model


def _kahn(n: int, succ: list[set[int]], indegree: list[int], key) -> list[int]:
    ready = [key(i) + (i,) for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)[-1]
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, key(j) + (j,))
    return order
