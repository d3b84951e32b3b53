"""The cluster's pieces that need no cluster: shard cutting, the recorded shard states, `--ray`
parsing, and Ray as an optional extra (never imported without --ray; a clear message without it)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnviz_fast.cluster import INSTALL, parse_address, plan_shards
from cnnviz_fast.errors import CnnvizError


@pytest.mark.parametrize("n,b,size", [(1, 1, 1), (100, 8, 20), (96, 8, 24), (7, 16, 1000), (1000, 32, 100)])
def test_shards_are_whole_batches_covering_the_manifest(n, b, size):
    shards = plan_shards(n, b, size)
    assert shards[0].first_batch == 0 and shards[-1].stop == n
    per = -(-size // b)
    for s, t in zip(shards, shards[1:]):
        assert s.stop_batch == t.first_batch and s.stop == t.start  # contiguous, no shared batch
        assert s.stop_batch - s.first_batch == per  # all but the last are full
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(s.start == s.first_batch * b and s.stop == min(s.stop_batch * b, n) for s in shards)


def test_shards_end_with_tar_files():
    # Tar files of 40, 40, 40 and 30 images, batches of 8 (40 = 5 batches), shards of 3 batches:
    # every shard ends where a tar file does, so no tar file is read by two workers.
    shards = plan_shards(150, 8, 24, [40, 80, 120, 150])
    assert [s.stop for s in shards] == [40, 80, 120, 150]
    # A tar file whose end falls inside a batch: the shard takes that whole batch (sums are exact
    # only per whole batch) and the next one starts after it.
    shards = plan_shards(100, 8, 16, [30, 100])
    assert [(s.first_batch, s.stop_batch) for s in shards][:1] == [(0, 4)]
    assert shards[1].first_batch == 4
    # A tar file much larger than a shard is still cut into shards of the asked size; the last
    # one takes the rest of the tar file when that is at most another shard.
    shards = plan_shards(400, 8, 16, [400])
    assert [s.stop_batch - s.first_batch for s in shards] == [2] * 23 + [4]


def test_tar_ends_of_a_manifest(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from cnnviz_fast.cluster._shards import tar_ends
    from cnnviz_fast.data import open_manifest

    for t, count in enumerate([3, 5, 2]):
        with tarfile.open(tmp_path / f"s{t}.tar", "w") as tar:
            for i in range(count):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (i, t, 0)).save(buf, "PNG")
                info = tarfile.TarInfo(f"{i:03d}.png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    manifest = open_manifest(str(tmp_path / "s{0..2}.tar"))
    try:
        assert tar_ends(manifest) == [3, 8, 10]
    finally:
        manifest.close()


def test_recorded_state_round_trips_without_pickle():
    from cnnviz_fast.results._shards import decode_state, encode_state

    rng = np.random.default_rng(0)
    state = {"k": 3, "next_batch": 0, "pending_batches": [4, 5, 6], "pending_empty": [6],
             "layers": [{"name": name, "values": rng.random((u, 3), np.float32),
                         "image_ids": rng.integers(0, 99, (u, 3)), "positions": rng.integers(0, 9, (u, 3)).astype(np.int32),
                         "images": rng.integers(0, 9, u), "sum_max": rng.random(u), "fired": rng.integers(0, 9, u),
                         "max": rng.random(u, np.float32), "pending_sums": rng.random((3, u))}
                        for name, u in (("conv1", 4), ("conv2", 7))]}
    blob = encode_state(state)
    assert b"pickle" not in blob
    back = decode_state(blob)
    assert {k: back[k] for k in ("k", "next_batch", "pending_batches", "pending_empty")} == \
           {k: state[k] for k in ("k", "next_batch", "pending_batches", "pending_empty")}
    for a, b in zip(back["layers"], state["layers"]):
        assert a["name"] == b["name"]
        for key, value in b.items():
            if key != "name":
                assert a[key].dtype == value.dtype and np.array_equal(a[key], value)


@pytest.mark.parametrize("spec,local,workers,address", [("local:2", True, 2, ""), ("auto", False, 0, "auto"),
                                                        ("ray://head:10001", False, 0, "ray://head:10001")])
def test_parse_address(spec, local, workers, address):
    a = parse_address(spec)
    assert (a.local, a.workers, a.address) == (local, workers, address)


@pytest.mark.parametrize("spec", ["local", "local:0", "local:x", ""])
def test_parse_address_refuses(spec):
    with pytest.raises(CnnvizError, match="--ray"):
        parse_address(spec)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("call", ["mine('demo', {data!r}, {out!r}, ray='local:2')",
                                  "project({out!r}, ray='auto')"])
def test_ray_missing_says_how_to_install(tmp_path, call):
    # `import ray` fails in the child as it does where Ray is not installed.
    res = _python(f"""
        import sys
        sys.modules["ray"] = None
        from cnnviz_fast import mine, project
        from cnnviz_fast.errors import CnnvizError
        try:
            {call.format(data=str(tmp_path), out=str(tmp_path / 'out'))}
        except CnnvizError as exc:
            print("MESSAGE", type(exc).__name__, exc)
        """)
    assert res.returncode == 0, res.stderr
    assert "MESSAGE" in res.stdout and "--ray needs Ray" in res.stdout and INSTALL in res.stdout
    assert ("MiningError" if "mine" in call else "ProjectionError") in res.stdout


def test_without_ray_option_ray_is_never_imported(tmp_path):
    from cnnviz_fast.datasets.synthetic import generate

    generate(tmp_path / "data", 12, seed=0, size=40)
    res = _python(f"""
        import sys
        import cnnviz_fast
        s = cnnviz_fast.mine("demo", {str(tmp_path / 'data')!r}, {str(tmp_path / 'out')!r}, progress="none",
                             max_error_rate=None)
        p = cnnviz_fast.project({str(tmp_path / 'out')!r}, progress="none")
        print("STATUS", s.status, p.projections > 0, "cnnviz_fast.cluster" in sys.modules,
              sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
        """)
    assert res.returncode == 0, res.stderr
    assert "STATUS finished True False []" in res.stdout


def test_cli_without_ray_installed_exits_2_with_the_install_line(tmp_path):
    res = _python(f"""
        import sys
        sys.modules["ray"] = None
        from cnnviz_fast.cli import main
        sys.exit(main(["mine", "demo", {str(tmp_path)!r}, "--out", {str(tmp_path / 'out')!r}, "--ray", "local:2"]))
        """)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert INSTALL in res.stderr and "Traceback" not in res.stderr


class _FakeCluster:
    """What `Pool` reads of a connected cluster: its alive nodes (and the local CPUs it was given)."""

    def __init__(self, nodes, local_cpus=0):
        self.ray, self.error, self._nodes, self.local_cpus = None, CnnvizError, nodes, local_cpus

    def nodes(self):
        return self._nodes


@pytest.mark.parametrize("nodes,device,threads,want", [
    # one worker per GPU, the node's CPUs shared among its GPUs for decoding
    ([{"cpus": 32, "gpus": 8, "host": "a"}, {"cpus": 16, "gpus": 4, "host": "b"}], "auto", None, ("cuda", 12, 4, 4)),
    # CPU nodes: one worker per `threads` CPUs of each node (default 4), never more than a node has
    ([{"cpus": 16, "gpus": 0, "host": "a"}, {"cpus": 6, "gpus": 0, "host": "b"}], "auto", None, ("cpu", 5, 4, 4)),
    ([{"cpus": 16, "gpus": 0, "host": "a"}], "auto", 8, ("cpu", 2, 8, 8)),
    ([{"cpus": 8, "gpus": 2, "host": "a"}], "cpu", 2, ("cpu", 4, 2, 2)),
])
def test_worker_slots_on_a_joined_cluster(nodes, device, threads, want):
    from cnnviz_fast.cluster import Address
    from cnnviz_fast.cluster._pool import Pool

    pool = Pool(_FakeCluster(nodes), Address("ray://x:1", False, 0, "ray://x:1"), device, threads, None)
    assert (pool.device, pool.slots, pool.cpus, pool.threads) == want
    assert pool.decode_workers == pool.cpus


def test_local_workers_share_the_cores_and_cuda_needs_gpus():
    from cnnviz_fast.cluster import Address
    from cnnviz_fast.cluster._pool import Pool
    from cnnviz_fast.errors import DeviceUnavailable

    pool = Pool(_FakeCluster([{"cpus": 4, "gpus": 0, "host": "a"}], local_cpus=4), Address("local:2", True, 2),
                "cpu", None, None)
    assert (pool.slots, pool.cpus, pool.threads) == (2, 2, 2)
    with pytest.raises(DeviceUnavailable, match="no GPUs"):
        Pool(_FakeCluster([{"cpus": 4, "gpus": 0, "host": "a"}]), Address("auto", False, 0, "auto"), "cuda", None, None)
