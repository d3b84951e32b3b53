"""Windowed projection: equal to the full-frame pass inside the receptive-field box and zero outside
it; boxes (project_boxes) equal the full frame cropped, zero-padded off the image; odd geometry
(dilation, padded ceil-mode pools, strides, groups, channel scales, non-square input) included, and
plans that cannot run in a window fall back to the full frame with the same results."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from cnnviz_fast.graph import Model
from cnnviz_fast.projection import Projector
from cnnviz_fast.testing import MODES, assert_close, onnx_oracle, pick_seeds
from _support.onnx_models import ort_tap


def _export(net: nn.Module, input_size) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, *input_size),), buf, input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": {0: "n"}, "out": {0: "n"}},
                          opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _odd_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 12, 3, dilation=2, padding=1), nn.ReLU(), nn.BatchNorm2d(12),
        nn.Conv2d(12, 12, 3, stride=3, padding=1, groups=3), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(12, 10, 1), nn.ReLU(),
    )
    bn = net[5]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    for m in net.modules():  # biases away from zero so that the ReLU masks matter
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net


@pytest.fixture(scope="module")
def odd():
    proto = _export(_odd_net(), (3, 45, 38))
    x = np.random.default_rng(2).normal(size=(3, 3, 45, 38)).astype(np.float32)
    return Model.from_proto(proto), onnx_oracle(proto), x


@pytest.fixture(scope="module")
def zfnet():
    model = Model.load("zfnet", random_weights=True, seed=0)
    x = np.random.default_rng(5).normal(size=(2, *model.input_size)).astype(np.float32)
    return model, x


def _inside_and_outside(model, p_full, p_win, x, layer, seeds):
    full = p_full.project(x, layer=layer.name, seeds=seeds)
    win = p_win.project(x, layer=layer.name, seeds=seeds)
    inside = np.zeros(full.shape, bool)
    for k, (top, left) in enumerate(p_win.box_origins(layer, seeds)):
        r, c = layer.rf_size
        inside[k, :, max(top, 0):max(top + r, 0), max(left, 0):max(left + c, 0)] = True
    assert np.all(win[~inside] == 0)
    assert np.all(full[~inside] == 0)  # the receptive field really bounds the projection
    assert_close(win, full, rtol=1e-5)
    return full, win


@pytest.mark.parametrize("mode", MODES)
def test_odd_geometry_windowed_equals_full_and_oracle(odd, mode):
    model, oracle, x = odd
    p_full = Projector(model, device="cpu", mode=mode, windowed=False)
    p_win = Projector(model, device="cpu", mode=mode)
    for i, layer in enumerate(model.layers):
        assert p_win.is_windowed(layer)
        seeds = pick_seeds(ort_tap(model, x, layer.name), 6, offset=i)
        full, win = _inside_and_outside(model, p_full, p_win, x, layer, seeds)
        assert_close(win, oracle.project(x, seeds, layer.tensor, mode))


def test_zfnet_windowed_equals_full_inside_the_box(zfnet):
    model, x = zfnet
    p_full = Projector(model, device="cpu", windowed=False)
    p_win = Projector(model, device="cpu")
    for i, layer in enumerate(model.layers):
        assert p_win.is_windowed(layer)
        seeds = pick_seeds(ort_tap(model, x, layer.name), 4, offset=i)
        _inside_and_outside(model, p_full, p_win, x, layer, seeds)


@pytest.mark.parametrize("windowed", [True, False])
def test_boxes_are_the_full_frame_cropped_and_zero_padded(zfnet, windowed):
    model, x = zfnet
    p = Projector(model, device="cpu", windowed=windowed)
    layer = model.layer("conv3")
    h, w = layer.map_shape
    seeds = [(0, 5, 0, 0), (1, 9, h - 1, 3), (0, 11, h // 2, w // 2), (1, 2, 0, w - 1)]
    full = p.project(x, layer=layer.name, seeds=seeds)
    boxes = p.project_boxes(x, layer=layer.name, seeds=seeds)
    r, c = layer.rf_size
    assert boxes.shape == (len(seeds), 3, r, c) and boxes.dtype == np.float32
    H, W = model.input_size[1:]
    for k, (top, left) in enumerate(p.box_origins(layer, seeds)):
        assert (top, left) == layer.receptive_field(*seeds[k][2:])[:2]
        padded = np.zeros((3, H + 2 * r, W + 2 * c), np.float32)
        padded[:, r:r + H, c:c + W] = full[k]
        np.testing.assert_array_equal(boxes[k], padded[:, r + top:r + top + r, c + left:c + left + c])
    assert np.all(boxes[0, :, : -layer.rf_start[0], :] == 0)  # the part above the image


def test_windowed_and_full_boxes_agree(zfnet):
    model, x = zfnet
    layer = model.layer("conv5")
    seeds = pick_seeds(ort_tap(model, x, layer.name), 6)
    win = Projector(model, device="cpu").project_boxes(x, layer=layer.name, seeds=seeds)
    full = Projector(model, device="cpu", windowed=False).project_boxes(x, layer=layer.name, seeds=seeds)
    assert_close(win, full, rtol=1e-5)


def test_a_plan_that_cannot_run_in_a_window_falls_back_to_the_full_frame():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.ZeroPad2d((2, 0, 1, 0)),
                        nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    model = Model.from_proto(_export(net, (3, 20, 22)))
    x = np.random.default_rng(0).normal(size=(2, 3, 20, 22)).astype(np.float32)
    p_win, p_full = Projector(model, device="cpu"), Projector(model, device="cpu", windowed=False)
    assert p_win.is_windowed(model.layers[0])
    assert not p_win.is_windowed(model.layers[1])  # Pad -> crop
    assert not p_win.is_windowed(model.layers[2])  # AveragePool adjoint
    for layer in model.layers:
        seeds = pick_seeds(ort_tap(model, x, layer.name), 4)
        np.testing.assert_array_equal(p_win.project(x, layer=layer.name, seeds=seeds),
                                      p_full.project(x, layer=layer.name, seeds=seeds))
        assert_close(p_win.project_boxes(x, layer=layer.name, seeds=seeds),
                     p_full.project_boxes(x, layer=layer.name, seeds=seeds))
