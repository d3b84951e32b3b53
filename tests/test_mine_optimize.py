"""The CPU rewrite of LRN in the mining graph computes ONNX's LRN (checked against the definition
in float64 and against ORT's own LRN kernel), for odd and even window sizes and any beta."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnviz_fast._metadata import write_metadata

from cnnviz_fast.mining._optimize import rewrite_lrn
from cnnviz_fast.mining._session import ForwardSession
from cnnviz_fast.graph import Model


def lrn_model(size, beta):
    """Conv -> Relu -> LRN -> Conv -> Relu, written with the onnx helper API (torch's exporter
    decomposes LRN), and the NumPy weights to recompute it."""
    rng = np.random.default_rng(size)
    w1 = rng.standard_normal((10, 3, 3, 3)).astype(np.float32)
    w2 = (rng.standard_normal((6, 10, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["conv1"]),
             helper.make_node("LRN", ["conv1"], ["n1"], size=size, alpha=1e-2, beta=beta, bias=2.0),
             helper.make_node("Conv", ["n1", "w2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["conv2"])]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 20, 20])],
                              [helper.make_tensor_value_info("conv2", TensorProto.FLOAT, ["N", 6, 18, 18])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    pre = {"resize": 20, "crop": 20, "mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB", "scale": 255.0}
    write_metadata(proto, preprocess=pre, layers=[{"name": "conv1", "tensor": "conv1", "kind": "conv"},
                                                  {"name": "conv2", "tensor": "conv2", "kind": "conv"}])
    return Model.from_proto(proto, "lrn"), (w1, w2)


def reference(x, w1, w2, size, beta):
    """conv2's per-image, per-unit maxima with LRN as ONNX defines it (float64)."""
    import torch

    t = torch.from_numpy(x.astype(np.float64))
    a = torch.relu(torch.nn.functional.conv2d(t, torch.from_numpy(w1.astype(np.float64)), padding=1))
    c = a.shape[1]
    sq = a * a
    s = torch.zeros_like(a)
    for ch in range(c):
        lo, hi = max(0, ch - (size - 1) // 2), min(c - 1, ch + -(-(size - 1) // 2))
        s[:, ch] = sq[:, lo:hi + 1].sum(1)
    n = a / (2.0 + 1e-2 / size * s) ** beta
    b = torch.relu(torch.nn.functional.conv2d(n, torch.from_numpy(w2.astype(np.float64))))
    return b.flatten(2).max(2).values.numpy()


@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.75), (3, 0.5), (1, 1.0)])
def test_rewritten_lrn_matches_ort_and_the_definition(size, beta):
    model, (w1, w2) = lrn_model(size, beta)
    graph = model.mining_graph(model.layers)
    rewritten, count = rewrite_lrn(graph)
    assert count == 1 and not any(n.op_type == "LRN" for n in rewritten.graph.node)
    x = np.random.default_rng(0).standard_normal((6, 3, 20, 20)).astype(np.float32) * 2
    fast_session = ForwardSession(model, model.layers, "cpu")
    assert fast_session.rewritten_lrns == 1
    fast = fast_session.run(x)
    np.testing.assert_allclose(fast[1][0], reference(x, w1, w2, size, beta), rtol=1e-4, atol=1e-5)
    if size % 2:  # ORT's own LRN kernel refuses even sizes (the rewrite handles them)
        plain = ForwardSession(model, model.layers, "cpu", optimize=False).run(x)
        np.testing.assert_allclose(fast[1][0], plain[1][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(fast[0][0], plain[0][0])  # conv1 is before the LRN


def test_graph_without_lrn_is_left_alone(tmp_path):
    from _support.mining import PRE, tiny_module

    from cnnviz_fast.zoo.export import export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_module(), path, input_size=(3, 32, 32), preprocess=PRE)
    graph = Model.load(path).mining_graph()
    assert rewrite_lrn(graph) == (graph, 0)
