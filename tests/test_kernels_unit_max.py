"""unit_max against the NumPy reference and against torch amax + argmax.

Values are copies of input elements and positions are integers: both compare exactly.
"""

import numpy as np
import pytest
import torch

from cnnviz_fast import _C
from cnnviz_fast import _reference as ref

SHAPES = [
    pytest.param((2, 3, 5, 7), id="odd"),
    pytest.param((3, 4, 1, 1), id="1x1-maps"),
    pytest.param((1, 2, 13, 1), id="column"),
    pytest.param((2, 5, 27, 27), id="conv5-like"),
    pytest.param((0, 3, 4, 4), id="N0"),
    pytest.param((2, 0, 4, 4), id="C0"),
    pytest.param((2, 3, 0, 4), id="H0"),
]


def check(device, a):
    values, positions = _C.unit_max(device.put(a))
    values, positions = device.get(values), device.get(positions)
    want_values, want_positions = ref.unit_max(a)
    assert values.dtype == np.float32 and positions.dtype == np.int32
    assert values.shape == positions.shape == a.shape[:2]
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(positions, want_positions)


@pytest.mark.parametrize("kind", ["normal", "relu", "integers", "special"])
@pytest.mark.parametrize("shape", SHAPES)
def test_unit_max_matches_reference(device, rng, make, shape, kind):
    check(device, make(rng, shape, kind))


def test_unit_max_maps_without_numbers(device, rng, make):
    """All-NaN maps give -inf and -1; all -inf maps give -inf at their first non-NaN position."""
    a = make(rng, (3, 6, 4, 5), "normal")
    a[0, 0] = np.nan
    a[0, 1] = -np.inf
    a[0, 2] = np.nan
    a[0, 2, 3, 1] = -np.inf
    a[1, 3] = np.nan
    a[1, 3, 2, 2] = 0.5
    a[2, 4, :2] = np.inf
    check(device, a)
    values, positions = ref.unit_max(a)
    np.testing.assert_array_equal(values[0, :3], [-np.inf, -np.inf, -np.inf])
    np.testing.assert_array_equal(positions[0, :3], [-1, 0, 16])


def test_unit_max_ties_take_the_first_position(device):
    a = np.zeros((2, 2, 6, 7), np.float32)
    a[0, 0, 4, 1] = a[0, 0, 2, 5] = a[0, 0, 5, 6] = 3.0
    a[1, 1] = 7.0
    check(device, a)
    _, positions = _C.unit_max(device.put(a))
    np.testing.assert_array_equal(device.get(positions), [[2 * 7 + 5, 0], [0, 0]])


def test_unit_max_accepts_non_contiguous_arrays(rng, make):
    base = make(rng, (4, 6, 11, 9), "relu")
    for a in (base.transpose(0, 1, 3, 2), base.transpose(1, 0, 2, 3), base[::2, 1::2, 2:, ::-2]):
        assert not a.flags.c_contiguous
        values, positions = _C.unit_max(a)
        want_values, want_positions = ref.unit_max(a)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(positions, want_positions)


@pytest.mark.parametrize("shape", [(8, 96, 55, 55), (16, 256, 13, 13), (4, 7, 31, 33)])
def test_unit_max_matches_torch_on_tie_free_input(device, rng, make, shape):
    a = make(rng, shape, "distinct")
    values, positions = _C.unit_max(device.put(a))
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(device.get(values), t.amax(dim=(2, 3)).numpy())
    np.testing.assert_array_equal(device.get(positions), t.flatten(2).argmax(dim=2).numpy())
