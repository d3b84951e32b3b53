"""topk_merge and TopKStore against brute force (the reference sorts every candidate at once).

(value, image id) is a total order and ids are unique, so the state is fully determined: values,
ids and positions all compare exactly.
"""

import numpy as np
import pytest

from cnnviz_fast import _C
from cnnviz_fast import _reference as ref


def empty_state(U, k):
    return np.full((U, k), -np.inf, np.float32), np.full((U, k), -1, np.int64), np.full((U, k), -1, np.int32)


def make_batches(rng, U, sizes, kind):
    """Batches of scores [B, U] with positions, each image id used once across all batches."""
    ids = rng.permutation(sum(sizes) * 3)[: sum(sizes)].astype(np.int64)
    batches = []
    start = 0
    for B in sizes:
        if kind == "ties":
            values = rng.integers(0, 4, (B, U)).astype(np.float32)
        else:
            values = rng.standard_normal((B, U)).astype(np.float32)
        if kind == "special":
            pick = rng.random((B, U))
            values[pick < 0.15] = np.nan
            values[(pick >= 0.15) & (pick < 0.3)] = -np.inf
            values[(pick >= 0.3) & (pick < 0.35)] = np.inf
        positions = rng.integers(0, 3025, (B, U)).astype(np.int32)
        batches.append((values, positions, ids[start : start + B]))
        start += B
    return batches


def brute_force(U, k, batches):
    state = empty_state(U, k)
    ref.topk_merge(*state, *(np.concatenate(parts) for parts in zip(*batches)))
    return state


def merge_on(device, U, k, batches):
    state = [device.put(a) for a in empty_state(U, k)]
    for b in batches:
        assert _C.topk_merge(*state, *(device.put(a) for a in b)) is None
    return [device.read(a) for a in state]


def assert_state_equal(got, want):
    for name, g, w in zip(("values", "image_ids", "positions"), got, want):
        assert g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)


CASES = [
    pytest.param(1, 1, [3, 0, 5], id="U1-k1"),
    pytest.param(7, 3, [5, 0, 17, 1, 40], id="U7-k3"),
    pytest.param(50, 9, [64, 64, 3, 0, 30], id="U50-k9"),
    pytest.param(13, 100, [64, 64, 0, 3], id="U13-k100"),
    pytest.param(5, 100, [10, 20], id="k100-partly-filled"),
]


@pytest.mark.parametrize("kind", ["ties", "normal", "special"])
@pytest.mark.parametrize("U, k, sizes", CASES)
def test_topk_merge_in_any_order_equals_brute_force(device, rng, U, k, sizes, kind):
    batches = make_batches(rng, U, sizes, kind)
    want = brute_force(U, k, batches)
    # Step by step against the reference, in the given order.
    state = [device.put(a) for a in empty_state(U, k)]
    ref_state = empty_state(U, k)
    for b in batches:
        _C.topk_merge(*state, *(device.put(a) for a in b))
        ref.topk_merge(*ref_state, *b)
        assert_state_equal([device.read(a) for a in state], ref_state)
    assert_state_equal(ref_state, want)
    for _ in range(3):
        order = rng.permutation(len(batches))
        assert_state_equal(merge_on(device, U, k, [batches[i] for i in order]), want)


def test_topk_merge_many_units(device, rng):
    U, k = 100_000, 9
    batches = make_batches(rng, U, [16, 16, 8], "ties")
    assert_state_equal(merge_on(device, U, k, batches), brute_force(U, k, batches))


def test_topk_merge_nan_and_neg_inf_never_enter(device, rng):
    U, k = 6, 4
    values = np.full((5, U), np.nan, np.float32)
    values[::2] = -np.inf
    batch = (values, np.zeros((5, U), np.int32), np.arange(5, dtype=np.int64))
    assert_state_equal(merge_on(device, U, k, [batch]), empty_state(U, k))
    values[1, 2] = -3.0
    values[4, 2] = np.inf
    got = merge_on(device, U, k, [batch])
    np.testing.assert_array_equal(got[0][2], [np.inf, -3.0, -np.inf, -np.inf])
    np.testing.assert_array_equal(got[1][2], [4, 1, -1, -1])
    assert_state_equal(got, brute_force(U, k, [batch]))


def test_topk_merge_empty_batch_changes_nothing(device, rng):
    U, k = 9, 5
    state = brute_force(U, k, make_batches(rng, U, [12], "ties"))
    on_device = [device.put(a.copy()) for a in state]
    empty = (np.zeros((0, U), np.float32), np.zeros((0, U), np.int32), np.zeros(0, np.int64))
    _C.topk_merge(*on_device, *(device.put(a) for a in empty))
    assert_state_equal([device.read(a) for a in on_device], state)


def test_topk_merge_equal_values_go_to_the_lower_image_id(device):
    U, k = 3, 4
    values = np.ones((6, U), np.float32)
    ids = np.array([50, 7, 31, 2, 99, 8], np.int64)
    positions = np.arange(6 * U, dtype=np.int32).reshape(6, U)
    got = merge_on(device, U, k, [(values[:3], positions[:3], ids[:3]), (values[3:], positions[3:], ids[3:])])
    for u in range(U):
        np.testing.assert_array_equal(got[1][u], [2, 7, 8, 31])
        np.testing.assert_array_equal(got[2][u], positions[[3, 1, 5, 2], u])


def store_device(device):
    return "cuda" if device.name == "cuda" else "cpu"


def test_topk_store_matches_brute_force(device, rng):
    U, k = 40, 9
    batches = make_batches(rng, U, [30, 0, 25, 64], "ties")
    store = _C.TopKStore(U, k, device=store_device(device))
    assert (store.units, store.k) == (U, k)
    assert store.device.startswith(store_device(device))
    assert_state_equal((store.values(), store.image_ids(), store.positions()), empty_state(U, k))
    for b in batches:
        store.merge(*(device.put(a) for a in b))
    got = (store.values(), store.image_ids(), store.positions())
    assert all(isinstance(a, np.ndarray) for a in got)
    assert_state_equal(got, brute_force(U, k, batches))


def test_topk_store_takes_host_batches(device, rng):
    """A GPU store uploads NumPy batches itself; a CPU store uses them in place."""
    U, k = 25, 5
    batches = make_batches(rng, U, [20, 20], "special")
    store = _C.TopKStore(U, k, device=store_device(device))
    for b in batches:
        store.merge(*b)
    assert_state_equal((store.values(), store.image_ids(), store.positions()), brute_force(U, k, batches))


def test_topk_store_load_resumes_a_saved_state(device, rng):
    U, k = 30, 7
    batches = make_batches(rng, U, [20, 15, 30], "ties")
    first = _C.TopKStore(U, k, device=store_device(device))
    first.merge(*batches[0])
    saved = (first.values(), first.image_ids(), first.positions())
    resumed = _C.TopKStore(U, k, device=store_device(device))
    resumed.load(*saved)
    for b in batches[1:]:
        resumed.merge(*(device.put(a) for a in b))
    assert_state_equal((resumed.values(), resumed.image_ids(), resumed.positions()), brute_force(U, k, batches))
