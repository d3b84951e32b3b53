"""Mining a residual and an SE/SiLU net end to end with their default layers, and an NHWC model.

The reference is independent of the miner: ONNX Runtime run directly on the original exported
file (no BN folding, no mining heads), the images normalised here with NumPy, and the top-k taken
by sorting (score descending, then image id).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from cnnviz_fast import mine
from cnnviz_fast.graph import Model
from cnnviz_fast.results import Results
from cnnviz_fast.testing.families import export_family
from _support.onnx_models import run

pytest.importorskip("torchvision", reason="the family models come from torchvision and timm")
pytest.importorskip("timm", reason="the family models come from torchvision and timm")

K = 3


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "families"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten 64x64 PNGs (lossless, already at the crop size: decoding is a plain read)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = []
    for i in range(10):
        a = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        a[rng.integers(0, 48):, rng.integers(0, 48):] //= 3  # some structure beyond noise
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
        pixels.append(a)
    return folder, np.stack(pixels)


def _reference_topk(path, tensors, pixels, pre):
    x = (pixels.astype(np.float64) / pre["scale"] - pre["mean"]) / pre["std"]
    x = x.transpose(0, 3, 1, 2).astype(np.float32)
    proto = onnx.load(str(path))
    for t in tensors:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    maps = run(proto, {proto.graph.input[0].name: x}, list(tensors))
    out = {}
    for t, a in maps.items():
        score = a.reshape(a.shape[0], a.shape[1], -1).max(axis=2).T  # [units, images]
        order = np.lexsort((np.broadcast_to(np.arange(score.shape[1]), score.shape), -score), axis=1)[:, :K]
        out[t] = (np.take_along_axis(score, order, 1), order)
    return out


@pytest.mark.parametrize("family", ["resnet18", "efficientnet_b0"])
def test_mine_family_default_layers(family, family_dir, images, tmp_path):
    folder, pixels = images
    path = export_family(family, cache_dir=family_dir)
    pre = {"resize": 64, "crop": 64, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "scale": 255.0}
    model = Model.load(path, preprocess=pre)
    summary = mine(model, folder, tmp_path / "out", top_k=K, batch_size=4, workers=1, threads=2,
                   progress="none")
    assert summary.errors == 0
    want = _reference_topk(path, [layer.tensor for layer in model.layers], pixels, pre)
    with Results(tmp_path / "out") as res:
        assert [info.name for info in res.layers()] == [layer.name for layer in model.layers]
        for layer in model.layers:
            top = res.topk(layer.name)
            values, ids = want[layer.tensor]
            scale = max(np.abs(values).max(), 1e-6)
            np.testing.assert_allclose(top.values, values, rtol=0, atol=1e-4 * scale, err_msg=layer.name)
            # ids equal except where two images' scores are within float noise of each other
            close = np.abs(top.values - values) <= 1e-4 * scale
            assert np.all((top.image_ids == ids) | close), layer.name
            assert np.mean(top.image_ids == ids) > 0.95, layer.name


def test_mine_nhwc_model(images, tmp_path):
    from test_graph_load import _nhwc_model

    folder, pixels = images
    proto = _nhwc_model(rescale=False, batch="unk__7")
    # this test's images are 64 px: the same graph at 64 px (flatten size follows)
    proto = _resized_nhwc(proto, 64)
    src = tmp_path / "keras.onnx"
    onnx.save(proto, str(src))
    pre = {"resize": 64, "crop": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1.0}
    model = Model.load(src, preprocess=pre)
    assert model.input_layout == "NHWC"
    mine(model, folder, tmp_path / "out", top_k=K, batch_size=4, workers=1, threads=2, progress="none")
    x = pixels.astype(np.float32)  # scale 1, no mean/std: the raw pixels, NHWC as the file wants
    maps = run(_with_outputs(proto, [layer.tensor for layer in model.layers]), {"input_1": x},
               [layer.tensor for layer in model.layers])
    with Results(tmp_path / "out") as res:
        for layer in model.layers:
            a = maps[layer.tensor]
            score = a.reshape(a.shape[0], a.shape[1], -1).max(axis=2).T
            np.testing.assert_allclose(res.topk(layer.name).values, -np.sort(-score, axis=1)[:, :K],
                                       rtol=1e-5, atol=1e-4)


def _with_outputs(proto, tensors):
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for t in tensors:
        out.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return out


def _resized_nhwc(proto, side):
    """The NHWC test model with a `side` x `side` input (its Reshape and MatMul sized to match)."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    dims = g.input[0].type.tensor_type.shape.dim
    dims[1].dim_value = dims[2].dim_value = side
    flat = (side // 2) ** 2 * 5
    rng = np.random.default_rng(7)
    for k, t in enumerate(g.initializer):
        if t.name == "flat":
            g.initializer[k].CopyFrom(numpy_helper.from_array(np.array([-1, flat], np.int64), "flat"))
        elif t.name == "fc":
            g.initializer[k].CopyFrom(numpy_helper.from_array(rng.normal(size=(flat, 3)).astype(np.float32), "fc"))
    del g.output[0].type.tensor_type.shape.dim[:]
    return out


@pytest.mark.parametrize("mode", ["deconvnet", "gradient"])
def test_project_nhwc_model_against_torch(mode):
    """Projections of the tf2onnx-style model equal a torch oracle of the same net written NCHW
    (rescaling by channel, conv1, relu, pool, conv2, relu) — images in, RGB images out."""
    import torch
    from onnx import numpy_helper
    from torch import nn

    from cnnviz_fast import Projector
    from cnnviz_fast.testing import Oracle, assert_close, pick_seeds
    from test_graph_load import _nhwc_model

    proto = _nhwc_model(rescale=True)
    model = Model.from_proto(proto)
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 5, 3, padding=1, bias=False)
            self.conv1.weight.data, self.conv2.weight.data = w["w1"], w["w2"]
            self.relu1, self.relu2, self.pool = nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)

        def forward(self, x):
            x = x * w["scale"].to(x.dtype).view(1, 3, 1, 1)
            return self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))

    net = Net()
    oracle = Oracle(net, {"conv1/Relu": net.relu1, "conv2/Relu": net.relu2})
    x = np.random.default_rng(8).uniform(0, 255, size=(2, 3, 12, 12)).astype(np.float32)
    for layer in model.layers:
        seeds = pick_seeds(oracle.tap(x, layer.name), count=5)
        got = Projector(model, device="cpu", mode=mode).project(x, layer=layer.name, seeds=seeds)
        assert got.shape == (len(seeds), 3, 12, 12)
        assert_close(got, oracle.project(x, seeds, layer.name, mode=mode), rtol=1e-4)
