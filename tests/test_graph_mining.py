"""Mining graphs: per-(image, unit) maxima and first-max positions equal a torch forward-hook
computation; native-head taps; pruning; mining works past ops the reverse plan refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz_fast.graph import Model
from _support.onnx_models import export_torch, foreign_model, make_model, run

ZOO = ("zfnet", "alexnet", "vgg16")


def hook_maxima(net: nn.Module, taps, x: np.ndarray) -> dict:
    """name -> (torch map [N, C, H*W], max [N, C], first argmax [N, C]) from forward hooks."""
    maps = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o.detach().clone()))
             for name, m in taps]
    try:
        with torch.no_grad():
            net.eval()(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, a in maps.items():
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        values, positions = flat.max(dim=2)  # documented: index of the first maximal value
        out[name] = (flat.numpy(), values.numpy(), positions.numpy())
    return out


def assert_heads_match(model: Model, want: dict, got: dict, rtol: float) -> None:
    """Values within rtol of the map's scale; positions equal, or (near-ties between ORT's and
    torch's float sums) a position whose torch value is within the same tolerance of the max."""
    for layer in model.taps("all"):
        flat, values, positions = want[layer.name]
        v, p = got[layer.max_output], got[layer.argmax_output]
        assert v.dtype == np.float32 and p.dtype == np.int32 and v.shape == values.shape
        tol = rtol * max(np.abs(flat).max(), 1e-6)
        np.testing.assert_allclose(v, values, rtol=0, atol=tol, err_msg=layer.name)
        at = np.take_along_axis(flat, p[..., None].astype(np.int64), axis=2)[..., 0]
        assert np.all((p == positions) | (values - at <= 2 * tol)), layer.name
        assert np.mean(p == positions) > 0.95, layer.name


def _small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(12, 16, 3, padding=1, dilation=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 3 * 3, 20), nn.ReLU(), nn.Linear(20, 4))


def test_small_net_heads_match_torch_hooks():
    torch.manual_seed(0)
    net = _small_net()
    model = Model.from_proto(export_torch(net, (3, 30, 30)))
    names = [layer.name for layer in model.all_layers]
    taps = list(zip(names, [m for m in net if isinstance(m, nn.ReLU)]))
    x = np.random.default_rng(0).normal(size=(5, 3, 30, 30)).astype(np.float32)
    got = run(model.mining_graph("all"), {model.input_name: x})
    assert sorted(got) == sorted(n for layer in model.all_layers for n in (layer.max_output, layer.argmax_output))
    assert_heads_match(model, hook_maxima(net, taps, x), got, 1e-5)


def test_native_heads_are_the_taps_and_unit_max_agrees():
    from cnnviz_fast import _C

    torch.manual_seed(1)
    net = _small_net()
    model = Model.from_proto(export_torch(net, (3, 30, 30)))
    x = np.random.default_rng(1).normal(size=(3, 3, 30, 30)).astype(np.float32)
    taps = run(model.mining_graph("all", heads="native"), {model.input_name: x})
    heads = run(model.mining_graph("all"), {model.input_name: x})
    assert sorted(taps) == sorted(layer.tensor for layer in model.all_layers)
    for layer in model.all_layers:
        a = taps[layer.tensor]
        a4 = a.reshape(*a.shape[:2], 1, 1) if a.ndim == 2 else a
        assert a4.shape[1:] == (layer.units, *layer.map_shape)
        values, positions = (np.asarray(t) for t in _C.unit_max(np.ascontiguousarray(a4)))
        np.testing.assert_array_equal(values, heads[layer.max_output])
        np.testing.assert_array_equal(positions, heads[layer.argmax_output])


def test_mining_graph_is_pruned():
    model = Model.from_proto(foreign_model())
    g = model.mining_graph(["act1"]).graph
    assert [i.name for i in g.input] == ["pixels"]
    assert [o.name for o in g.output] == ["act1:max", "act1:argmax"]
    ops = [n.op_type for n in g.node]
    assert "Gemm" not in ops and "MaxPool" not in ops and ops.count("Conv") == 1
    assert {t.name for t in g.initializer} >= {n.input[1] for n in g.node if n.op_type == "Conv"}
    assert not {"fc1_w", "fc2_w"} & {t.name for t in g.initializer}


def test_mining_survives_ops_the_reverse_plan_refuses():
    plain, odd = Model.from_proto(foreign_model()), Model.from_proto(foreign_model("Sigmoid"))
    x = np.random.default_rng(4).normal(size=(2, 3, 21, 21)).astype(np.float32)
    got = run(odd.mining_graph("all"), {"pixels": x})
    taps = run(odd.mining_graph("all", heads="native"), {"pixels": x})
    for layer in odd.all_layers:
        flat = taps[layer.tensor].reshape(2, layer.units, -1)
        np.testing.assert_array_equal(got[layer.max_output], flat.max(2))
        np.testing.assert_array_equal(got[layer.argmax_output], flat.argmax(2))
    # The Sigmoid changes conv2's input, so the maps differ from the plain model's past it.
    same = run(plain.mining_graph(["act1"]), {"pixels": x})
    np.testing.assert_array_equal(same["act1:max"], got["act1:max"])


@pytest.fixture(scope="module", params=ZOO)
def zoo_pair(request):
    from cnnviz_fast import zoo

    torch.manual_seed(0)  # the same seed export_zoo uses: the same random weights
    net = zoo.build(request.param)
    return Model.load(request.param, random_weights=True, seed=0), net


def test_zoo_heads_match_torch_hooks(zoo_pair):
    model, net = zoo_pair
    x = np.random.default_rng(5).normal(size=(2, *model.input_size)).astype(np.float32)
    got = run(model.mining_graph("all"), {model.input_name: x})
    # fc6/fc7 sum 9216-25088 products: ORT and torch accumulate in different orders.
    assert_heads_match(model, hook_maxima(net, net.taps(), x), got, 1e-4)


def _load_onnx_weights(net: nn.Module, proto) -> None:
    """Conv / Gemm weights of `proto`, in graph order, into `net`'s Conv2d / Linear modules in
    module order. The exporter folds eval-mode BatchNorm into the Conv, so BN becomes identity."""
    from onnx import numpy_helper

    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    modules = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(nodes) == len(modules)
    for node, m in zip(nodes, modules):
        assert not any(a.name == "transB" and a.i == 0 for a in node.attribute)
        m.weight.data, m.bias.data = inits[node.input[1]], inits[node.input[2]]
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())


def test_demo_heads_match_torch_hooks():
    """The shipped demo model, its ONNX weights loaded back into the training script's DemoNet."""
    import onnx

    from cnnviz_fast.zoo import train_demo

    model = Model.load("demo")
    net = train_demo.DemoNet(len(model.labels), model.input_size[1])
    _load_onnx_weights(net, onnx.load(str(model.path)))
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    taps = list(zip([layer.name for layer in model.all_layers], relus, strict=True))
    x = np.random.default_rng(6).normal(size=(8, *model.input_size)).astype(np.float32)
    got = run(model.mining_graph("all"), {model.input_name: x})
    assert_heads_match(model, hook_maxima(net, taps, x), got, 1e-5)


def test_nan_gives_nan_or_the_max_of_the_numbers():
    """The invariant the miner relies on (DESIGN: NaN never enters the top-k, which refuses NaN)."""
    from onnx import helper as h

    nodes = [h.make_node("Relu", ["pixels"], ["out"], "relu")]
    model = Model.from_proto(make_model(nodes, [], ["N", 3, 3, 4]))
    x = np.random.default_rng(7).normal(size=(6, 3, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0] = x[1, 1, 2, 3] = x[2, 2, 1, 1] = np.nan
    x[3, 0] = np.nan
    got = run(model.mining_graph(["out"]), {"pixels": x})  # a raw tensor tap
    values, positions = got["out:max"], got["out:argmax"]
    flat = np.maximum(x, 0, where=~np.isnan(x), out=np.full_like(x, np.nan)).reshape(6, 3, -1)
    with np.errstate(invalid="ignore"):
        want = np.nanmax(np.where(np.isnan(flat), -np.inf, flat), axis=2)
    ok = np.isnan(values) | (values == want)
    assert ok.all()
    picked = np.take_along_axis(flat, positions[..., None].astype(np.int64), 2)[..., 0]
    assert np.all(np.isnan(values) | (picked == values))
    assert np.isnan(values[3, 0])  # a map with no number
