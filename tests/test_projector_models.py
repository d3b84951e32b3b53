"""Projector == an independent autograd deconvnet (test_projector_helpers.Oracle), relative error
<= 1e-4, for every conv layer of the demo model, ZFNet, AlexNet and VGG16 (random weights), at
corner, edge and centre positions, full-frame and windowed, in the three modes."""
from __future__ import annotations

import numpy as np
import pytest

from cnnviz_fast.graph import Model
from cnnviz_fast.projection import Projector
from cnnviz_fast.testing import MODES, assert_close, onnx_oracle, pick_seeds, zoo_oracle
from _support.onnx_models import ort_tap


@pytest.fixture(scope="module")
def demo():
    model = Model.load("demo")
    x = np.random.default_rng(0).normal(size=(3, *model.input_size)).astype(np.float32)
    return model, onnx_oracle(model.path), x, lambda layer: layer.tensor


def _zoo(name: str, images: int):
    model = Model.load(name, random_weights=True, seed=0)
    oracle = zoo_oracle(name, seed=0)
    x = np.random.default_rng(1).normal(size=(images, *model.input_size)).astype(np.float32)
    # The oracle must hold the exported weights: its first and last taps equal ONNX Runtime's.
    for layer in (model.layers[0], model.layers[-1]):
        np.testing.assert_allclose(oracle.tap(x[:1], layer.name), ort_tap(model, x[:1], layer.name),
                                   rtol=1e-4, atol=1e-4)
    return model, oracle, x, lambda layer: layer.name


@pytest.fixture(scope="module")
def zfnet():
    return _zoo("zfnet", 2)


@pytest.fixture(scope="module")
def alexnet():
    return _zoo("alexnet", 2)


@pytest.fixture(scope="module")
def vgg16():
    return _zoo("vgg16", 2)


def _check(case, mode: str, layers=None, seeds_per_layer: int = 6) -> None:
    model, oracle, x, key = case
    full = Projector(model, device="cpu", mode=mode, windowed=False)
    win = Projector(model, device="cpu", mode=mode)
    chosen = model.layers if layers is None else [model.layer(n) for n in layers]
    fwd_full, fwd_win = full.forward(x, chosen), win.forward(x, chosen)  # one forward serves all layers
    for i, layer in enumerate(chosen):
        seeds = pick_seeds(ort_tap(model, x, layer.name), seeds_per_layer, offset=2 * i)
        want = oracle.project(x, seeds, key(layer), mode)
        assert_close(full.project(fwd_full, layer=layer.name, seeds=seeds), want)
        assert_close(win.project(fwd_win, layer=layer.name, seeds=seeds), want)


@pytest.mark.parametrize("mode", MODES)
def test_demo_every_layer(demo, mode):
    model = demo[0]
    _check(demo, mode, [layer.name for layer in model.all_layers])  # fc1 too (full frame)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_zfnet(zfnet, mode):
    _check(zfnet, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_alexnet(alexnet, mode):
    _check(alexnet, mode, seeds_per_layer=4 if mode == "deconvnet" else 3)


@pytest.mark.slow
def test_vgg16_deconvnet(vgg16):
    _check(vgg16, "deconvnet", seeds_per_layer=2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["guided", "gradient"])
def test_vgg16_other_modes(vgg16, mode):
    _check(vgg16, mode, ["conv1", "conv4", "conv8", "conv13"], seeds_per_layer=2)
