"""Checks of the projector tests' oracle (`cnnviz_fast.testing.onnx_oracle`, the ONNX graph replayed
in torch) against ONNX Runtime's forward pass, and of its modes."""
from __future__ import annotations

import numpy as np
import pytest

from _support.onnx_models import ort_tap
from cnnviz_fast.testing import MODES, onnx_oracle, pick_seeds


@pytest.fixture(scope="module")
def demo_oracle():
    from cnnviz_fast.graph import Model

    model = Model.load("demo")
    return model, onnx_oracle(model.path)


def test_onnx_oracle_forward_equals_onnx_runtime(demo_oracle):
    model, oracle = demo_oracle
    x = np.random.default_rng(0).normal(size=(2, *model.input_size)).astype(np.float32)
    for layer in model.all_layers:
        np.testing.assert_allclose(oracle.tap(x, layer.tensor), ort_tap(model, x, layer.name), rtol=1e-4, atol=1e-5)


def test_oracle_modes_differ_only_in_the_relu_rule(demo_oracle):
    model, oracle = demo_oracle
    x = np.random.default_rng(1).normal(size=(2, *model.input_size)).astype(np.float32)
    layer = model.layer("conv3")
    seeds = pick_seeds(ort_tap(model, x, layer.name), 2)
    got = {mode: oracle.project(x, seeds, layer.tensor, mode) for mode in MODES}
    assert not np.allclose(got["deconvnet"], got["gradient"])
    assert not np.allclose(got["guided"], got["gradient"])
