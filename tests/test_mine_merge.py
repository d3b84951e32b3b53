"""The mining loop apart from the driver: partial states of ranges and lists of image ids, merged in
any order, equal the single run (and `mine()`'s results.db) bit for bit, ties included."""
from __future__ import annotations

import pickle
import random
import shutil

import numpy as np
import pytest

from cnnviz_fast.data import BatchLoader, Preprocess, open_manifest
from cnnviz_fast.errors import MiningError
from cnnviz_fast.graph import Model
from cnnviz_fast.mining import mine
from cnnviz_fast.mining._loop import mine_batches, mine_partial
from cnnviz_fast.mining._session import ForwardSession
from cnnviz_fast.mining._state import MiningState
from cnnviz_fast.results import Results
from _support.mining import PRE, query, tiny  # noqa: F401

K, B = 6, 8
FIELDS = ("values", "image_ids", "positions", "images", "sum_max", "fired", "max", "hist")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """~300 images: generated ones, copies of some (identical maxima: ties broken by image id),
    black and white images (equal maps), and two broken files (failed slots inside batches)."""
    from PIL import Image

    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("merge")
    paths = generate(root / "gen", 260, seed=5, size=40)
    for j, src in enumerate(paths[:5]):
        for c in range(5):
            shutil.copy(src, root / f"copy_{j}_{c}.jpg")
    for c in range(6):
        Image.new("RGB", (40, 40), (0, 0, 0)).save(root / f"black_{c}.png")
        Image.new("RGB", (40, 40), (255, 255, 255)).save(root / f"white_{c}.png")
    (root / "gen" / "broken_a.jpg").write_bytes(b"not an image")
    (root / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    return root


@pytest.fixture(scope="module")
def setup(tiny, data):
    model = Model.load(tiny)
    taps = model.taps(None)
    pre = Preprocess.from_metadata(PRE)
    manifest = open_manifest(data)
    session = ForwardSession(model, taps, "cpu", threads=1, uint8_input=pre)
    yield model, taps, pre, manifest, session
    session.close()
    manifest.close()


def _part(setup, ids=None):
    _, taps, pre, manifest, session = setup
    with BatchLoader(manifest, pre, B, 2, layout="uint8", ids=ids) as loader:
        return mine_partial(session, loader, taps, K)


@pytest.fixture(scope="module")
def single(setup):
    return _part(setup)


def assert_same(a: MiningState, b: MiningState):
    da, db = a.state_dict(), b.state_dict()
    assert (da["next_batch"], da["pending_batches"]) == (db["next_batch"], db["pending_batches"])
    for la, lb in zip(da["layers"], db["layers"]):
        for f in FIELDS:
            x, y = la[f], lb[f]
            assert x.dtype == y.dtype and x.shape == y.shape, f
            # Bit for bit (float equality would let -0.0 == 0.0 through).
            assert x.tobytes() == y.tobytes(), f"{la['name']}.{f} differs"


def merge_randomly(parts: list[dict], rng: random.Random, setup) -> MiningState:
    """Merge state dicts in a random tree: pick two, merge, put the result back, until one is left."""
    _, taps, *_ = setup
    pool = list(parts)
    while len(pool) > 1:
        rng.shuffle(pool)
        a, b = pool.pop(), pool.pop()
        s = MiningState(taps, K)
        s.set_state_dict(pickle.loads(pickle.dumps(a)))  # as a state crosses a process boundary
        s.merge(b if rng.random() < 0.5 else _state_of(b, taps))
        pool.append(s.state_dict())
    out = MiningState(taps, K)
    out.set_state_dict(pool[0])
    return out


def _state_of(d: dict, taps) -> MiningState:
    s = MiningState(taps, K)
    s.set_state_dict(d)
    return s


def test_single_run_has_ties_failures_and_every_batch(single, setup):
    manifest = setup[3]
    n_batches = -(-len(manifest) // B)
    assert single.state.batches == list(range(n_batches)) and single.images == len(manifest)
    assert sorted(e[0] for e in single.errors) == [i for i in range(len(manifest)) if "broken" in manifest.path(i)]
    tied = 0
    for d in single.state.state_dict()["layers"]:
        v, ids = d["values"], d["image_ids"]
        same = (v[:, 1:] == v[:, :-1]) & (ids[:, 1:] >= 0)
        assert np.all(ids[:, 1:][same] > ids[:, :-1][same])  # ties go to the lower image id
        tied += int(same.sum())
    assert tied > 0, "the data set must put ties into some top-k"


def test_single_run_equals_brute_force(single, setup):
    """Top-k by (value desc, id asc) over every image's maxima, and the sum in the documented order
    (per batch in float64, batch sums added in batch order)."""
    _, taps, pre, manifest, session = setup
    per_layer = [([], [], [], np.zeros(t.units)) for t in taps]
    with BatchLoader(manifest, pre, B, 1, layout="uint8") as loader:
        for batch in loader:
            if not len(batch.ids):
                continue
            for (vals, poss, idss, total), (v, p) in zip(per_layer, session.run(batch.images)):
                vals.append(v.copy()), poss.append(p.copy()), idss.append(batch.ids.copy())
                total += np.where(np.isnan(v), 0.0, v).sum(axis=0, dtype=np.float64)
    for (vals, poss, idss, total), d in zip(per_layer, single.state.state_dict()["layers"]):
        v, p = np.concatenate(vals), np.concatenate(poss)
        ids = np.concatenate(idss)
        for unit in range(v.shape[1]):
            order = np.lexsort((ids, -v[:, unit]))[:K]
            np.testing.assert_array_equal(d["values"][unit], v[order, unit])
            np.testing.assert_array_equal(d["image_ids"][unit], ids[order])
            np.testing.assert_array_equal(d["positions"][unit], p[order, unit])
        assert d["sum_max"].tobytes() == total.tobytes()
        np.testing.assert_array_equal(d["fired"], (v > 0).sum(axis=0))
        np.testing.assert_array_equal(d["max"], v.max(axis=0))
        np.testing.assert_array_equal(d["hist"], _brute_hist(v))
        np.testing.assert_array_equal(d["hist"].sum(axis=1), d["images"])


def _brute_hist(v: np.ndarray) -> np.ndarray:
    """Per unit, the images whose maximum lies in each bin's interval as `bin_bounds` states it
    (the naive loop over bins, independent of the miner's searchsorted)."""
    from cnnviz_fast.results import _hist

    low, high = _hist.bin_bounds()
    out = np.zeros((v.shape[1], _hist.N_BINS), np.int64)
    x = v.astype(np.float64)
    for b in range(_hist.N_BINS):
        if high[b] <= 0 and b != _hist.CENTER:      # negative bins: low < v <= high
            inside = (x > low[b]) & (x <= high[b])
        else:
            inside = (x >= low[b]) & (x < high[b])
        out[:, b] = inside.sum(axis=0)
    return out


def test_hist_bins_are_fixed_and_cover_every_scale():
    """Bins chosen without looking at the data: values from 1e-6 to 1e5, both signs, zero and +inf
    each land in the bin whose bounds hold them; neighbours one ulp apart across an edge part."""
    from cnnviz_fast.results import _hist

    low, high = _hist.bin_bounds()
    assert np.all(low[1:] >= low[:-1]) and np.all(high > low)
    v = np.array([[0.0, -0.0, 1e-6, 3e-3, 0.7, 1.0, 1.2499999, 1.25, 37.0, 9e4, np.inf, -2.5, -1e-6, -7e4]],
                 np.float32).T
    b = _hist.bins(v)[:, 0]
    for value, bin_ in zip(v[:, 0].astype(np.float64), b):
        if value >= 0 or bin_ == _hist.CENTER:
            inside = low[bin_] <= value < high[bin_] or value == high[bin_] == np.inf
        else:
            inside = low[bin_] < value <= high[bin_]
        assert inside, (value, bin_, low[bin_], high[bin_])
    assert b[0] == b[1] == b[2] == _hist.CENTER and b[6] + 1 == b[7] and b[-1] == 0
    valid = np.ones_like(v, bool)
    valid[3] = False
    np.testing.assert_array_equal(_hist.counts(v, valid).sum(axis=1), [v.shape[0] - 1])


def test_hist_bins_equal_a_binary_search_over_the_edges():
    """`bins` computes m from the float exponent; the definition is the number of edges <= |v|:
    every edge, its float32 neighbours on both sides, both signs, zero, tiny, huge and inf."""
    from cnnviz_fast.results import _hist

    rng = np.random.default_rng(0)
    e = _hist.EDGES.astype(np.float32)
    v = np.concatenate([rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 9, 50_000), e, -e,
                        np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(np.inf)),
                        [0.0, -0.0, np.inf, -np.inf, 1e30, -1e30, 1e-30, -1e-30]]).astype(np.float32)
    m = np.searchsorted(_hist.EDGES, np.abs(v.astype(np.float64)), side="right")
    want = np.where(v < 0, _hist.CENTER - m, _hist.CENTER + m)
    np.testing.assert_array_equal(_hist.bins(v), want)
    np.testing.assert_array_equal(_hist.bins(v.reshape(-1, 2)), want.reshape(-1, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranges_merged_in_any_order_equal_the_single_run(single, setup, seed):
    rng = random.Random(seed)
    n_batches = len(single.state.batches)
    n = len(setup[3])
    cuts = sorted(rng.sample(range(1, n_batches), rng.randint(2, 6)))
    bounds = [0, *[c * B for c in cuts], n]
    parts = [_part(setup, range(a, b)) for a, b in zip(bounds, bounds[1:])]
    assert sum(p.images for p in parts) == n
    assert sorted(e for p in parts for e in p.errors) == sorted(single.errors)
    assert_same(merge_randomly([p.state.state_dict() for p in parts], rng, setup), single.state)


@pytest.mark.parametrize("seed", [3, 4])
def test_id_lists_of_scattered_batches_merged_in_any_order_equal_the_single_run(single, setup, seed):
    rng = random.Random(seed)
    n = len(setup[3])
    owner = [rng.randrange(4) for _ in range(-(-n // B))]
    parts = []
    for p in range(4):
        ids = [i for i in range(n) if owner[i // B] == p]
        rng.shuffle(ids)  # the loader sorts a list
        parts.append(_part(setup, ids).state.state_dict())
    # In sequence too, each part into the growing total.
    total = MiningState(setup[1], K)
    for d in rng.sample(parts, len(parts)):
        total.merge(d)
    assert_same(total, single.state)
    assert_same(merge_randomly(parts, rng, setup), single.state)


def test_mine_writes_what_the_merged_state_holds(single, tiny, data, tmp_path):
    """The driver runs the same loop: results.db's top-k and exact sums equal the merged parts."""
    mine(tiny, data, tmp_path, top_k=K, batch_size=B, workers=2, progress="none")
    state = single.state.state_dict()
    db = tmp_path / "results.db"
    for layer in state["layers"]:
        rows = query(db, "SELECT unit, rank, value, image_id FROM topk WHERE layer = ? ORDER BY unit, rank",
                     layer["name"])
        for unit, rank, value, image_id in rows:
            assert (value, image_id) == (float(layer["values"][unit, rank]), int(layer["image_ids"][unit, rank]))
        assert len(rows) == int((layer["image_ids"] >= 0).sum())
        sums = query(db, "SELECT sum_max FROM unit_sums WHERE layer = ? ORDER BY unit", layer["name"])
        assert np.array([s for (s,) in sums]).tobytes() == layer["sum_max"].tobytes()
        hist = np.zeros_like(layer["hist"])
        for unit, b, count in query(db, "SELECT unit, bin, count FROM unit_hist WHERE layer = ?", layer["name"]):
            hist[unit, b] = count
        np.testing.assert_array_equal(hist, layer["hist"])
    with Results(tmp_path) as res:
        for layer in state["layers"]:
            np.testing.assert_array_equal(res.unit_hist(layer["name"]), layer["hist"])


def test_merges_that_cannot_be_exact_are_refused(single, setup):
    taps = setup[1]
    n = len(setup[3])
    a, b = _part(setup, range(0, B + 3)), _part(setup, range(B + 3, n))  # batch 1 cut in two
    with pytest.raises(MiningError, match=r"both hold batch\(es\) 1$"):
        a.state.merge(b.state)
    again = _part(setup, range(2 * B, 4 * B))
    with pytest.raises(MiningError, match=r"both hold batch\(es\) 3$"):
        again.state.merge(_part(setup, range(3 * B, 5 * B)).state)
    with pytest.raises(MiningError, match="no checkpoint"):
        again.state.snapshot()  # batches 2..3 do not start at batch 0: results.db cannot hold them
    with pytest.raises(MiningError, match="different layers or k"):
        MiningState(taps, K - 1).merge(single.state)
    with pytest.raises(MiningError, match="already in this mining state"):
        single.state.update(None, np.zeros(0, np.int64), None, batch=0)


def test_stopping_early_leaves_the_state_at_the_last_batch_seen(setup):
    _, taps, pre, manifest, session = setup
    state = MiningState(taps, K)
    with BatchLoader(manifest, pre, B, 2, layout="uint8", depth=3) as loader:
        for batch in mine_batches(session, loader, state):
            if batch.index == 4:
                break
    assert state.batches == [0, 1, 2, 3, 4]
    rest = _part(setup, range(5 * B, len(manifest)))
    state.merge(rest.state)
    whole = _part(setup)
    assert_same(state, whole.state)


def test_hist_survives_a_stop_and_resume(single, tiny, data, tmp_path):
    """A run stopped part-way (the error budget) and resumed holds the single run's histogram:
    the checkpoint writes unit_hist and the resume reads it back."""
    from cnnviz_fast.errors import ErrorRateExceeded

    with pytest.raises(ErrorRateExceeded) as info:
        mine(tiny, data, tmp_path, top_k=K, batch_size=B, workers=2, progress="none", max_error_rate=0.0)
    assert 0 < info.value.summary.done < len(single.state.batches) * B
    mine(tiny, data, tmp_path, top_k=K, batch_size=B, workers=1, progress="none")
    with Results(tmp_path) as res:
        for layer in single.state.state_dict()["layers"]:
            np.testing.assert_array_equal(res.unit_hist(layer["name"]), layer["hist"])
