"""Mining on a real local Ray cluster (2 workers, dashboard off) equals the single process exactly,
for a chain CNN and a residual one, whatever happens to its workers and its driver."""
from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnviz_fast.errors import MiningError, RunLocked
from cnnviz_fast.mining import mine
from _support.mining import PRE, tiny  # noqa: F401

ray = pytest.importorskip("ray")
from cnnviz_fast.cluster import mine as cluster_mine  # noqa: E402

B, SHARD = 16, 48
TABLES = {"topk": "SELECT * FROM topk ORDER BY layer, unit, rank",
          "unit_stats": "SELECT * FROM unit_stats ORDER BY layer, unit",
          "unit_sums": "SELECT * FROM unit_sums ORDER BY layer, unit",
          "errors": "SELECT * FROM errors ORDER BY image_id",
          "images": "SELECT * FROM images ORDER BY image_id"}


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the in-process tests: 2 CPUs, dashboard off, a small object store."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 ** 2,
             log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """300 generated images and two broken files (errors inside shards)."""
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("cluster_data")
    generate(root, 300, seed=11, size=40)
    (root / "circles" / "broken.jpg").write_bytes(b"not an image")
    (root / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff")
    return root


@pytest.fixture(scope="module")
def residual(tmp_path_factory) -> Path:
    """A tiny ResNet-style CNN: a stem, two residual blocks (identity and 1x1-projection skips)."""
    import torch
    from torch import nn

    from cnnviz_fast.zoo.export import export_onnx

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.ra = nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()
            self.b = nn.Conv2d(cout, cout, 3, 1, 1)
            self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)
            self.out = nn.ReLU()

        def forward(self, x):
            return self.out(self.b(self.ra(self.a(x))) + self.skip(x))

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.r0 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.b1, self.b2 = Block(8, 8, 1), Block(8, 12, 2)

        def forward(self, x):
            return self.b2(self.b1(self.r0(self.stem(x))))

        def taps(self):
            return [("stem", self.r0), ("block1", self.b1.out), ("block2", self.b2.out)]

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("res") / "res.onnx"
    export_onnx(Res().eval(), path, input_size=(3, 32, 32), preprocess=PRE, model_name="res")
    return path


def rows(out: Path) -> dict:
    con = sqlite3.connect(out / "results.db")
    try:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        con.close()


def shards(out: Path) -> list[tuple]:
    con = sqlite3.connect(out / "results.db")
    try:
        return con.execute("SELECT shard, first_batch, stop_batch, images, attempts, state IS NULL "
                           "FROM shards ORDER BY shard").fetchall()
    finally:
        con.close()


def single(model, data, out) -> dict:
    mine(model, data, out, top_k=5, batch_size=B, threads=1, workers=1, progress="none")
    return rows(out)


def on_cluster(model, data, out, **kw):
    kw = {"ray": "auto", "top_k": 5, "batch_size": B, "shard_images": SHARD, "threads": 1, "progress": "none", **kw}
    return cluster_mine(model, data, out, **kw)


def assert_same(got: dict, want: dict) -> None:
    for table in TABLES:
        assert got[table] == want[table], table  # floats compared exactly: the same bits


@pytest.mark.parametrize("which", ["chain", "residual"])
def test_cluster_equals_single_process(cluster, data, tiny, residual, tmp_path, which):  # noqa: F811
    model = tiny if which == "chain" else residual
    want = single(model, data, tmp_path / "single")
    stream = io.StringIO()
    summary = on_cluster(model, data, tmp_path / "cluster", progress="lines", stream=stream)
    assert summary.status == "finished" and summary.done == 302 and summary.errors == 2
    assert_same(rows(tmp_path / "cluster"), want)
    recorded = shards(tmp_path / "cluster")
    # 302 images in batches of 16 = 19 batches, shards of 3 batches: 7 shards, all recorded, once,
    # covering every batch, their states released into the final checkpoint.
    assert [(r[1], r[2]) for r in recorded] == [(3 * i, min(3 * i + 3, 19)) for i in range(7)]
    assert sum(r[3] for r in recorded) == 302 and all(r[4] == 1 and r[5] for r in recorded)
    text = stream.getvalue()
    assert "/2 workers)" in text and "2 worker(s) on cpu" in text and "0 shard(s) retried" in text


def test_reduce_in_shard_order_whatever_order_shards_arrive(data, tiny, tmp_path):  # noqa: F811
    """The driver's reduction, fed the shards' partial states in reverse and shuffled orders."""
    import random

    from cnnviz_fast.cluster._mine import _config, _Reduce
    from cnnviz_fast.cluster._shards import plan_shards
    from cnnviz_fast.data import BatchLoader, Preprocess, open_manifest
    from cnnviz_fast.graph import Model
    from cnnviz_fast.mining._loop import mine_partial
    from cnnviz_fast.mining._session import ForwardSession
    from cnnviz_fast.mining._state import MiningState
    from cnnviz_fast.results import _shards as records
    from cnnviz_fast.results import open_results

    want = single(tiny, data, tmp_path / "single")
    model = Model.load(tiny)
    taps, pre, manifest = model.taps(None), Preprocess.from_metadata(PRE), open_manifest(data)
    session = ForwardSession(model, taps, "cpu", threads=1, uint8_input=pre)
    parts = []
    for s in plan_shards(len(manifest), B, SHARD):
        with BatchLoader(manifest, pre, B, 1, layout="uint8", ids=range(s.start, s.stop)) as loader:
            parts.append((s, mine_partial(session, loader, taps, 5)))
    session.close()
    for n, order in enumerate([parts[::-1], random.Random(0).sample(parts, len(parts))]):
        out = tmp_path / f"order{n}"
        config = _config(model, taps, pre, manifest, 5, B, "cpu", SHARD)
        db, _ = open_results(out, config, {}, manifest)
        records.ensure_shards_table(db.con)
        red = _Reduce(db, records, taps, MiningState(taps, 5, "cpu"), {}, 0, 0.0, B, len(manifest), 10 ** 9, 1e9)
        for s, part in order:
            records.record_shard(db.con, s.index, s.first_batch, s.stop_batch, part.images, part.errors,
                                 part.state.state_dict(), "test", 1, 0.0)
            red.add(s.first_batch, part.state.state_dict(), part.images)
        red.checkpoint("finished")
        db.close()
        assert_same(rows(out), want)
    manifest.close()


def _worker_processes() -> list[int]:
    """Pids of the Ray worker processes that hold a ShardWorker (Ray titles them `ray::ShardWorker...`;
    the method in the title is the last one started, and progress polls start often)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::ShardWorker"):
                found.append(int(entry))
    return found


def test_worker_killed_mid_shard_is_replaced(cluster, data, tiny, tmp_path):  # noqa: F811
    want = single(tiny, data, tmp_path / "single")
    out = tmp_path / "cluster"
    killed: list[int] = []

    def killer():
        # Once the first of 7 shards is recorded both workers are in a shard (each takes the next
        # one at once): kill one of them there.
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            try:
                recorded = len(shards(out))
            except sqlite3.Error:  # no results.db or no shards table yet
                recorded = 0
            busy = _worker_processes()
            if 1 <= recorded <= 4 and len(busy) >= 2:
                victim = max(busy)  # this run's workers are the newest (earlier tests' may still be exiting)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    stream = io.StringIO()
    summary = on_cluster(tiny, data, out, progress="lines", stream=stream)
    thread.join()
    assert killed, "no worker was seen mining"
    assert summary.status == "finished"
    assert_same(rows(out), want)
    recorded = shards(out)
    assert sorted(r[4] for r in recorded) == [1] * (len(recorded) - 1) + [2]  # one shard mined twice
    assert "3 worker process(es) ran, 1 shard(s) retried" in stream.getvalue()


def test_driver_killed_then_resumed(cluster, data, tiny, tmp_path):  # noqa: F811
    """A driver (with its own local:2 cluster) SIGKILLed after some shards; the rerun skips them."""
    want = single(tiny, data, tmp_path / "single")
    out = tmp_path / "cluster"
    code = (f"from cnnviz_fast.cluster import mine; mine({str(tiny)!r}, {str(data)!r}, {str(out)!r}, "
            f"ray='local:2', top_k=5, batch_size={B}, shard_images=16, threads=1, progress='none', "
            "checkpoint_images=10**9, checkpoint_seconds=1e9)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.db").exists():
                try:
                    if len(shards(out)) >= 4:
                        break
                except sqlite3.OperationalError:  # the shards table is not there yet
                    pass
            time.sleep(0.1)
        assert proc.poll() is None, "the driver ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _kill_group(proc.pid)
    before = shards(out)
    assert len(before) >= 4 and all(not released for *_, released in before)  # states kept, not checkpointed
    summary = on_cluster(tiny, data, out, shard_images=16)
    assert summary.status == "finished" and summary.resumed_from == sum(r[3] for r in before)
    assert summary.processed == 302 - summary.resumed_from
    assert_same(rows(out), want)
    after = shards(out)
    assert after[:len(before)] != [] and {r[0] for r in before} <= {r[0] for r in after}
    assert all(r[4] == 1 for r in after)  # the shards of the killed driver were not mined again


def _kill_group(pgid: int) -> None:
    """What the killed driver's local cluster left behind (agents that outlive their raylet)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_worker_that_cannot_read_the_data_stops_the_run(cluster, data, tiny, tmp_path):  # noqa: F811
    """Workers read images by path: a dataset the workers do not see fails with their sentence."""
    import shutil

    from cnnviz_fast.data import open_manifest

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    manifest = open_manifest(copy)  # listed here, then gone before the workers look
    shutil.rmtree(copy)
    with pytest.raises(MiningError) as err:
        on_cluster(tiny, manifest, tmp_path / "out")
    text = str(err.value)
    assert "cannot open the dataset here" in text and "share that storage" in text and "pid" in text
    assert "Traceback" not in text and "ray::" not in text


def test_worker_that_cannot_load_the_model_stops_the_run(cluster, data, tiny, tmp_path, monkeypatch):  # noqa: F811
    from cnnviz_fast.cluster import _pool

    start = _pool.Pool.start
    monkeypatch.setattr(_pool.Pool, "start", lambda self, model_bytes, job: start(self, b"\x08garbage", job))
    with pytest.raises(MiningError) as err:
        on_cluster(tiny, data, tmp_path / "out")
    assert "cannot start: cannot load the model" in str(err.value) and "Traceback" not in str(err.value)


def test_second_driver_on_one_folder_is_refused(cluster, data, tiny, tmp_path):  # noqa: F811
    from cnnviz_fast._dirlock import lock_folder, unlock_folder

    out = tmp_path / "out"
    out.mkdir()
    fd = lock_folder(out)
    try:
        with pytest.raises(RunLocked):
            on_cluster(tiny, data, out)
    finally:
        unlock_folder(fd)


def test_another_shard_size_is_refused_on_resume(cluster, data, tiny, tmp_path):  # noqa: F811
    from cnnviz_fast.errors import ConfigMismatch

    out = tmp_path / "out"
    summary = on_cluster(tiny, data, out)
    assert summary.status == "finished"
    again = on_cluster(tiny, data, out)
    assert again.already_finished
    with pytest.raises(ConfigMismatch, match="shards of 48 images"):
        on_cluster(tiny, data, out, shard_images=96)


def test_projection_on_cluster_writes_the_single_process_files(cluster, data, tiny, tmp_path):  # noqa: F811
    import filecmp
    import json
    import shutil

    from cnnviz_fast.cluster import project as cluster_project
    from cnnviz_fast.projection import project

    single(tiny, data, tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    want = project(tmp_path / "one", save_arrays=True, progress="none")
    got = cluster_project(tmp_path / "two", ray="auto", threads=1, save_arrays=True, progress="none")
    assert (got.projected, got.projections, got.images, got.stale) == (want.projected, want.projections,
                                                                        want.images, want.stale)
    a, b = tmp_path / "one" / "projections", tmp_path / "two" / "projections"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(f.suffix == ".npy" for f in files) and any(f.parent.name == "images" for f in files)
    for f in files:
        if f.name == "layer.json":  # the marker: the same but for how long the layer took
            x, y = json.loads((a / f).read_text()), json.loads((b / f).read_text())
            assert {**x, "elapsed_s": 0} == {**y, "elapsed_s": 0}, f
        else:
            assert filecmp.cmp(a / f, b / f, shallow=False), f
    again = cluster_project(tmp_path / "two", ray="auto", threads=1, save_arrays=True, progress="none")
    assert again.skipped == want.projected and not again.projected  # done layers are not redone


class _Unpicklable:
    """Fails where it is unpickled: in the worker, while Ray builds its constructor's arguments."""

    def __reduce__(self):
        return int, ("not a number",)


def test_worker_that_cannot_be_created_stops_the_run_at_once(cluster, data, tiny, tmp_path, monkeypatch):  # noqa: F811
    from cnnviz_fast.cluster import _pool

    start = _pool.Pool.start
    monkeypatch.setattr(_pool.Pool, "start", lambda self, model_bytes, job, *a: start(
        self, model_bytes, {**job, "poison": _Unpicklable()}, *a))
    with pytest.raises(MiningError) as err:
        on_cluster(tiny, data, tmp_path / "out")
    text = str(err.value)
    assert text.startswith("a worker could not be created") and "invalid literal for int()" in text
    assert "Traceback" not in text and "\n" not in text


def test_public_entry_points_and_a_sample(cluster, data, tiny, tmp_path):  # noqa: F811
    """`cnnviz_fast.mine(..., ray=...)` with `limit`: the single process's sample (its own packed
    batch grid), the same rows; `cnnviz_fast.project(..., ray=...)` the same summary."""
    import shutil

    import cnnviz_fast

    mine(tiny, data, tmp_path / "one", top_k=5, batch_size=B, threads=1, workers=1, progress="none", limit=101)
    want = rows(tmp_path / "one")
    summary = cnnviz_fast.mine(tiny, data, tmp_path / "two", ray="auto", top_k=5, batch_size=B, threads=1,
                               progress="none", limit=101, shard_images=32)
    assert summary.done == 101 and "worker process(es) ran" in summary.notes[-1]
    assert_same(rows(tmp_path / "two"), want)
    shutil.rmtree(tmp_path / "one" / "projections", ignore_errors=True)
    a = cnnviz_fast.project(tmp_path / "one", progress="none", layers="conv3")
    b = cnnviz_fast.project(tmp_path / "two", progress="none", layers="conv3", ray="auto")
    assert (a.projected, a.projections, a.images) == (b.projected, b.projections, b.images)


def test_cli_mine_stopped_by_sigterm_resumed_on_a_joined_cluster_then_project(cluster, data, tiny, tmp_path):  # noqa: F811
    """`cnnviz-fast mine ... --ray local:2` (its own cluster) ends on SIGTERM with status 143 and the
    finished shards kept; the same command with `--ray HOST:PORT` (joining the tests' cluster)
    completes it, equal to the single process; `project --ray HOST:PORT` projects."""
    want = single(tiny, data, tmp_path / "single")
    out = tmp_path / "cli"
    base = [sys.executable, "-m", "cnnviz_fast"]
    args = ["mine", str(tiny), str(data), "--out", str(out), "--shard-images", "16", "--batch-size", str(B),
            "--top-k", "5", "--threads", "1", "--progress", "lines", "--checkpoint-every", "1000000"]
    proc = subprocess.Popen(base + args + ["--ray", "local:2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(shards(out)) >= 3:
                    break
            except sqlite3.OperationalError:  # no results.db or no shards table yet
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    kept = len(shards(out))
    address = ray.get_runtime_context().gcs_address
    res = subprocess.run(base + args + ["--ray", address], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout + res.stderr and "0 shard(s) retried" in res.stdout + res.stderr
    assert_same(rows(out), want)
    assert len(shards(out)) == 19 and kept >= 3
    res = subprocess.run(base + ["project", str(out), "--ray", address, "--layers", "conv1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (out / "projections" / "conv1" / "layer.json").is_file()
