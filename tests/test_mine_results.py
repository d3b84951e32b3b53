"""Mining results against brute force (torch forward hooks over the same decoded images), and the
same results whatever the dataset's packaging, the heads, the worker count or the batch path."""
from __future__ import annotations

import numpy as np
import pytest

from cnnviz_fast.data import BatchLoader, Preprocess, decode, open_manifest
from cnnviz_fast.mining import mine
from cnnviz_fast.mining._session import ForwardSession
from cnnviz_fast.mining._state import MiningState
from cnnviz_fast.graph import Model
from _support.mining import PRE, folder_files, images, make_tar, query, tables, tiny, tiny_module  # noqa: F401

K = 5


@pytest.fixture(scope="module")
def mined(tiny, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("mined")
    summary = mine(tiny, images, out, top_k=K, batch_size=16, workers=2, progress="none")
    return out / "results.db", summary


def brute_force(model_path, data):
    """Per layer: maxima [N, C] and first positions [N, C] from torch hooks, over manifest order."""
    import torch

    manifest = open_manifest(data)
    pre = Preprocess.from_metadata(PRE)
    x = torch.from_numpy(np.stack([decode(manifest.read(i), pre) for i in range(len(manifest))]))
    net = tiny_module()
    maps = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: maps.__setitem__(n, o.detach().numpy()))
             for n, m in net.taps()]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    out = {}
    for name, a in maps.items():
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        out[name] = (flat.max(axis=2), flat.argmax(axis=2), a.shape[3], flat)
    return out


def test_topk_and_stats_equal_brute_force(mined, tiny, images):
    db, summary = mined
    assert summary.status == "finished" and summary.errors == 0 and summary.done == 240
    ref = brute_force(tiny, images)
    tol = 1e-4
    for layer, (vmax, vpos, width, flat) in ref.items():
        n, units = vmax.shape
        rows = query(db, "SELECT unit, rank, value, image_id, y, x FROM topk WHERE layer = ? ORDER BY unit, rank", layer)
        assert len(rows) == units * K
        for unit in range(units):
            got = [r for r in rows if r[0] == unit]
            # Brute force top-k: value descending, ties to the lower image id.
            order = sorted(range(n), key=lambda i: (-vmax[i, unit], i))[:K]
            np.testing.assert_allclose([r[2] for r in got], vmax[order, unit], rtol=tol, atol=tol)
            for rank, (_, _, value, image_id, y, x) in enumerate(got):
                # The chosen image really scores that much, at that position (robust to near-ties
                # between ONNX Runtime's and torch's float rounding).
                assert abs(vmax[image_id, unit] - value) <= tol * max(1.0, abs(value))
                assert abs(flat[image_id, unit, y * width + x] - value) <= tol * max(1.0, abs(value))
                if rank + 1 < K and abs(vmax[order[rank], unit] - vmax[order[rank + 1], unit]) > 10 * tol:
                    assert image_id == order[rank]
        stats = query(db, "SELECT unit, images, mean_max, firing_rate, max FROM unit_stats WHERE layer = ? ORDER BY unit", layer)
        assert [s[0] for s in stats] == list(range(units))
        for unit, count, mean_max, rate, mx in stats:
            assert count == n
            np.testing.assert_allclose(mean_max, vmax[:, unit].astype(np.float64).mean(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(mx, vmax[:, unit].max(), rtol=tol, atol=tol)
            lo, hi = np.sum(vmax[:, unit] > tol), np.sum(vmax[:, unit] > 0) + np.sum(vmax[:, unit] == 0)
            assert lo <= round(rate * n) <= hi


def test_dead_units_are_counted(mined):
    db, summary = mined
    dead = query(db, "SELECT COUNT(*) FROM unit_stats WHERE images > 0 AND firing_rate = 0")[0][0]
    assert summary.dead_units == dead
    assert summary.units == 8 + 16 + 12


def test_folder_list_and_tar_give_the_same_results(mined, tiny, images, tmp_path):
    db, _ = mined
    files = folder_files(images)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{images / name}\n" for name, _ in files))
    half = len(files) // 2
    make_tar(tmp_path / "shard-000.tar", files[:half])
    make_tar(tmp_path / "shard-001.tar", files[half:])
    want = tables(db)
    for data in (listing, str(tmp_path / "shard-{000..001}.tar")):
        out = tmp_path / ("list" if data == listing else "tar")
        mine(tiny, data, out, top_k=K, batch_size=16, workers=3, progress="none")
        assert tables(out / "results.db") == want
        paths = query(out / "results.db", "SELECT path FROM images ORDER BY image_id")
        assert len(paths) == len(files)


def test_native_heads_and_bound_outputs_agree_with_graph_heads(tiny, images):
    """The CUDA code path (IOBinding, DLPack outputs) run on the CPU, and the native unit_max heads,
    give the graph heads' maxima and positions exactly."""
    model = Model.load(tiny)
    pre = Preprocess.from_metadata(PRE)
    m = open_manifest(images)
    x = np.stack([decode(m.read(i), pre) for i in range(24)])
    ids = np.arange(100, 124, dtype=np.int64)
    plain = ForwardSession(model, model.layers, "cpu", heads="graph")
    base = plain.run(x)
    want = MiningState(model.layers, 4)
    want.update(base, ids, plain.host)
    for heads, bound in (("native", False), ("graph", True), ("native", True)):
        s = ForwardSession(model, model.layers, "cpu", heads=heads, iobinding=bound)
        buf = s.allocate((24, 3, 32, 32))
        buf[:] = x
        outs = s.run(buf)
        for (v, p), (bv, bp) in zip(outs, base):
            np.testing.assert_array_equal(s.host(v), bv)
            np.testing.assert_array_equal(s.host(p), bp)
        state = MiningState(model.layers, 4)
        state.update(outs, ids, s.host)  # OrtValues go into the top-k stores through DLPack
        for a, b in zip(state.snapshot(), want.snapshot()):
            for field in ("values", "image_ids", "positions", "images", "sum_max", "fired", "max"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        s.close()


@pytest.mark.parametrize("run_images", [None, 5])
def test_cpu_native_heads_reuse_their_buffers_across_batches(tiny, images, monkeypatch, run_images):
    """CPU "auto" is native heads written into buffers reused from run to run (IOBinding): every
    batch, including a smaller last one and a return to the first size, gives the graph heads'
    results exactly, and what one run returned is not changed by the next. With RUN_BYTES at 5
    images' maps a batch of 16 runs as 4 chunks of 4 and one of 7 as 2 chunks of 4 and 3, in buffers
    of 5 rows."""
    from cnnviz_fast.mining import _session

    model = Model.load(tiny)
    per_image = sum(4 * layer.units * int(np.prod(layer.map_shape)) for layer in model.layers)
    if run_images is not None:
        monkeypatch.setattr(_session, "RUN_BYTES", run_images * per_image)
    pre = Preprocess.from_metadata(PRE)
    m = open_manifest(images)
    x = np.stack([decode(m.read(i), pre) for i in range(len(m))]).astype(np.float32)
    graph = ForwardSession(model, model.layers, "cpu", heads="graph")
    auto = ForwardSession(model, model.layers, "cpu", batch_size=16)
    assert auto.heads == "native" and auto._maps_binding is not None
    assert (auto._run_size == run_images) if run_images else (auto._run_size >= 16)
    rows = min(16, auto._run_size)  # the buffers: batch_size rows, or one run's at most
    assert {len(a) for a in auto._maps.values()} == {min(16, auto._run_size)}
    batches = [x[:16], x[16:32], x[-7:], x[::-1][:16].copy()]
    kept = []
    seen = []
    for batch in batches:
        got = auto.run(batch)
        kept.append([(np.array(v), np.array(p)) for v, p in got])
        seen.append({a.ctypes.data for a in auto._maps.values()})
        for (v, p), (gv, gp) in zip(got, graph.run(batch)):
            assert v.shape == gv.shape == (len(batch), gv.shape[1])
            np.testing.assert_array_equal(v, gv)
            np.testing.assert_array_equal(p, gp)
    assert all(s == seen[0] for s in seen)  # the same buffers every run
    assert {len(a) for a in auto._maps.values()} == {rows}
    first = auto.run(batches[0])  # and the results of earlier runs are their own arrays
    for (v, p), (kv, kp) in zip(first, kept[0]):
        np.testing.assert_array_equal(v, kv)
        np.testing.assert_array_equal(p, kp)
    auto.close()


def test_native_heads_learn_map_shapes_from_onnx_runtime_when_not_inferred(tiny, images, monkeypatch):
    """Where shape inference leaves a tapped map's size open, the first run asks ORT (one image)."""
    from cnnviz_fast.mining import _session

    monkeypatch.setattr(_session, "_map_shapes", lambda proto, outputs: None)
    model = Model.load(tiny)
    pre = Preprocess.from_metadata(PRE)
    m = open_manifest(images)
    x = np.stack([decode(m.read(i), pre) for i in range(20)]).astype(np.float32)
    auto = ForwardSession(model, model.layers, "cpu")
    assert auto.heads == "native" and auto._maps == {}
    got = auto.run(x)
    assert set(auto._map_shapes) == {layer.tensor for layer in model.layers}
    for (v, p), (gv, gp) in zip(got, ForwardSession(model, model.layers, "cpu", heads="graph").run(x)):
        np.testing.assert_array_equal(v, gv)
        np.testing.assert_array_equal(p, gp)


def test_map_buffers_are_in_small_pages():
    """The native heads' map buffers ask Linux for 4 KiB pages (see _session._small_pages): the
    mapping holding one is marked "nh" (no huge pages) and holds no anonymous huge page."""
    from cnnviz_fast.mining import _session

    a = _session._small_pages((16, 1024, 1024))  # 64 MiB
    a[:] = 1.0
    assert a.dtype == np.float32 and a.shape == (16, 1024, 1024) and a.flags.writeable and float(a.sum()) == 16 * 2 ** 20
    try:
        smaps = open("/proc/self/smaps").read()
    except OSError:
        pytest.skip("no /proc/self/smaps (not Linux)")
    addr = a.ctypes.data
    for block in _smaps_blocks(smaps):
        lo, hi = (int(h, 16) for h in block[0].split()[0].split("-"))
        if lo <= addr < hi:
            fields = dict(line.split(":", 1) for line in block[1:] if ":" in line)
            assert "nh" in fields["VmFlags"].split()
            assert fields["AnonHugePages"].strip() == "0 kB"
            break
    else:
        pytest.fail("the buffer's mapping is not in /proc/self/smaps")


def _smaps_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in text.splitlines():
        head = line.split()[0] if line.split() else ""
        if "-" in head and ":" not in head:
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    return blocks


def test_auto_heads_choice():
    from cnnviz_fast.mining import _session

    model_layers = [type("L", (), {"tensor": "a", "units": 64, "map_shape": (56, 56)})(),
                    type("L", (), {"tensor": "b", "units": 1000, "map_shape": (1, 1)})()]
    assert _session._auto_heads(model_layers, "cpu") == "native"
    assert _session._auto_heads(model_layers, "cuda") == "graph"  # the maps never leave the GPU
    per_image = 4 * (64 * 56 * 56 + 1000)
    side = int(np.sqrt(_session.NATIVE_BUFFER_BYTES / 4 / 64)) + 1  # one image's maps pass the limit
    huge = [type("L", (), {"tensor": "a", "units": 64, "map_shape": (side, side)})()]
    assert 4 * 64 * side * side > _session.NATIVE_BUFFER_BYTES > per_image
    assert _session._auto_heads(huge, "cpu") == "graph"  # too much to hold in buffers


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_uint8_batches_normalised_in_the_graph_equal_float_batches(tiny, images, order):
    model = Model.load(tiny)
    pre = Preprocess.from_metadata(dict(PRE, channel_order=order))
    m = open_manifest(images)
    with BatchLoader(m, pre, 40, 2) as f, BatchLoader(m, pre, 40, 2, layout="uint8") as u:
        fb, ub = next(iter(f)), next(iter(u))
        assert ub.images.dtype == np.uint8 and ub.images.shape == (40, 32, 32, 3)
        plain = ForwardSession(model, model.layers, "cpu").run(fb.images)
        in_graph = ForwardSession(model, model.layers, "cpu", uint8_input=pre).run(ub.images)
    for (a, b), (c, d) in zip(plain, in_graph):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_results_db_layout(mined):
    db, _ = mined
    cols = {t: [r[1] for r in query(db, f"PRAGMA table_info({t})")] for t in ("run", "images", "topk", "unit_stats", "errors")}
    assert cols == {"run": ["key", "value"], "images": ["image_id", "path"],
                    "topk": ["layer", "unit", "rank", "value", "image_id", "y", "x"],
                    "unit_stats": ["layer", "unit", "images", "mean_max", "firing_rate", "max"],
                    "errors": ["image_id", "path", "error"]}
    assert query(db, "PRAGMA journal_mode")[0][0] == "wal"
    run = dict(query(db, "SELECT key, value FROM run"))
    assert {"model_sha256", "layers", "top_k", "preprocess", "dataset", "versions", "batch_size"} <= set(run)


def test_tiny_model_loads(tiny):
    from cnnviz_fast.graph import Model

    m = Model.load(tiny)
    assert [layer.name for layer in m.layers] == ["conv1", "conv2", "conv3"]
    assert [layer.map_shape for layer in m.layers] == [(32, 32), (14, 14), (6, 6)]
