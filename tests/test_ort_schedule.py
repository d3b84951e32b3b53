"""The branches-first node order (graph/_schedule.py) and the sessions that run ONNX Runtime's
optimised graph in it (runtime.session(..., branches_first=True))."""
from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnviz_fast import runtime
from cnnviz_fast.graph._onnx import IR_VERSION
from cnnviz_fast.graph._schedule import reorder_graph, schedule_branches_first


def _graph(edges: list[tuple[list[str], list[str]]], outputs: list[str]) -> onnx.GraphProto:
    nodes = [helper.make_node("Identity" if len(i) == 1 else "Sum", i, o, f"n{k}") for k, (i, o) in enumerate(edges)]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1]) for t in outputs])


def _is_topological(graph: onnx.GraphProto, order: list[int]) -> bool:
    made = {i.name for i in graph.input}
    for k in order:
        node = graph.node[k]
        if not all(t in made for t in node.input):
            return False
        made.update(node.output)
    return sorted(order) == list(range(len(graph.node)))


def test_a_side_branch_runs_right_after_what_it_reads():
    # a trunk x -> a -> b -> c -> d -> e with a head on a and one on c, listed last (as ORT adds them)
    g = _graph([(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["d"], ["e"]),
                (["c"], ["head_c"]), (["a"], ["head_a"])], ["e", "head_a", "head_c"])
    order = schedule_branches_first(g)
    assert _is_topological(g, order)
    names = [g.node[k].output[0] for k in order]
    assert names == ["a", "head_a", "b", "c", "head_c", "d", "e"]


def test_a_two_node_head_runs_whole_before_the_trunk_goes_on():
    g = _graph([(["x"], ["a"]), (["a"], ["b"]), (["b"], ["c"]), (["c"], ["d"]), (["a"], ["h1"]), (["h1"], ["h2"])],
               ["d", "h2"])
    names = [g.node[k].output[0] for k in schedule_branches_first(g)]
    assert names == ["a", "h1", "h2", "b", "c", "d"]


@pytest.mark.parametrize("seed", range(5))
def test_random_dags_get_a_topological_order(seed):
    rng = random.Random(seed)
    edges, tensors = [], ["x"]
    for k in range(40):
        ins = rng.sample(tensors, min(len(tensors), rng.choice([1, 1, 2, 3])))
        edges.append((ins, [f"t{k}"]))
        tensors.append(f"t{k}")
    rng.shuffle(edges)  # the file order need not be topological
    g = _graph(edges, [f"t{k}" for k in range(40)])
    order = schedule_branches_first(g)
    assert _is_topological(g, order)
    m = helper.make_model(g)
    reorder_graph(m)
    assert _is_topological(m.graph, list(range(len(m.graph.node))))


def _residual_net(blocks: int = 3, c: int = 16) -> tuple[onnx.ModelProto, list[str]]:
    """A small ResNet-like graph, every block output a graph output (a mining graph's taps)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x, cin, cout, name):
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32), name + "_w")
        b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), name + "_b")
        inits.extend([w, b])
        nodes.append(helper.make_node("Conv", [x, w.name, b.name], [name], name, pads=[1, 1, 1, 1]))
        return name

    def relu(x, name):
        nodes.append(helper.make_node("Relu", [x], [name], name))
        return name

    x = relu(conv("image", 3, c, "stem"), "stem_relu")
    taps = [x]
    for k in range(blocks):
        y = relu(conv(x, c, c, f"b{k}_conv1"), f"b{k}_relu1")
        y = conv(y, c, c, f"b{k}_conv2")
        nodes.append(helper.make_node("Add", [y, x], [f"b{k}_sum"], f"b{k}_add"))
        x = relu(f"b{k}_sum", f"block{k}")
        taps.append(x)
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 24, 24])],
                          [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", c, 24, 24]) for t in taps], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION), taps


def _executed_ops(sess) -> list[str]:
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    return [e["args"]["op_name"] for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def test_branches_first_session_gives_the_same_bits_and_reorders_each_tap_as_it_is_made(tmp_path):
    """The graph's outputs equal a default session's bit for bit; and where ONNX Runtime uses its
    blocked layout (ReorderOutput nodes), each tap's reorder runs right after its convolution block
    rather than all of them at the end, as the default order does."""
    model, taps = _residual_net()
    x = np.random.default_rng(1).standard_normal((4, 3, 24, 24)).astype(np.float32)
    default = runtime.session(model, "cpu", threads=1, profile=str(tmp_path / "default"))
    ordered = runtime.session(model, "cpu", threads=1, branches_first=True, profile=str(tmp_path / "ordered"))
    for a, b in zip(default.run(taps, {"image": x}), ordered.run(taps, {"image": x})):
        np.testing.assert_array_equal(a, b)
    ops_default, ops_ordered = _executed_ops(default), _executed_ops(ordered)
    if "ReorderOutput" not in ops_default:
        pytest.skip("ONNX Runtime uses no blocked (NCHWc) layout on this CPU: nothing to reorder")
    assert sorted(ops_default) == sorted(ops_ordered)  # the same nodes, only their order differs

    def reorders_after_a_reorder(ops):
        return sum(1 for prev, op in zip(ops, ops[1:]) if op == prev == "ReorderOutput")

    assert reorders_after_a_reorder(ops_default) > 0  # the default order bunches them up at the end
    assert reorders_after_a_reorder(ops_ordered) == 0
    assert ops_ordered.index("ReorderOutput") < len(ops_ordered) - len(taps)


def test_graphs_with_subgraphs_keep_onnx_runtimes_order():
    from cnnviz_fast.graph._schedule import has_subgraphs

    then = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    assert has_subgraphs(g)
    assert not has_subgraphs(_residual_net(1)[0].graph)


def test_without_a_writable_temporary_folder_the_session_warns_and_keeps_onnx_runtimes_order(monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    model, taps = _residual_net(1)
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 24)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="Read-only file system.*ONNX Runtime's own order"):
        sess = runtime.session(model, "cpu", threads=1, branches_first=True, what="the test graph")
    want = runtime.session(model, "cpu", threads=1).run(taps, {"image": x})
    for a, b in zip(sess.run(taps, {"image": x}), want):
        np.testing.assert_array_equal(a, b)


def test_a_graph_that_cannot_run_raises_onnx_runtimes_error_not_a_warning():
    model, _ = _residual_net(1)
    model.graph.node[0].input[1] = "no_such_weight"
    with pytest.raises(Exception, match="no_such_weight"):
        runtime.session(model, "cpu", threads=1, branches_first=True)
