"""`mine(limit=N)` / `--limit N`: a fixed, evenly spaced sample of the manifest, mined as its own
batch grid; image ids stay manifest positions; the limit is part of the configuration; a stopped
sample run resumes to the uninterrupted result."""
from __future__ import annotations

import numpy as np
import pytest

from cnnviz_fast.data import open_manifest
from cnnviz_fast.data.manifest import sample_ids
from cnnviz_fast.errors import ConfigMismatch, ErrorRateExceeded, MiningError
from cnnviz_fast.mining import mine
from _support.mining import query, tables, tiny  # noqa: F401

N, LIMIT, K = 31, 10, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("limit")
    generate(root, N, seed=3, size=40)
    return root


def test_sample_ids_are_evenly_spaced_and_fixed():
    assert sample_ids(31, 10).tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert sample_ids(10, 10) is None and sample_ids(10, 50) is None and sample_ids(10, None) is None
    big = sample_ids(1_281_167, 1000)
    assert len(np.unique(big)) == 1000 and big[-1] < 1_281_167 and np.all(np.diff(big) > 0)
    with pytest.raises(ValueError):
        sample_ids(10, 0)


def test_limit_mines_exactly_the_sample(tiny, data, tmp_path):
    """The top-k of the sample is the best K of the sampled ids in a full run that keeps every image
    per unit (ties by id), so nothing outside the sample and everything inside it was seen."""
    full, part = tmp_path / "full", tmp_path / "part"
    mine(tiny, data, full, top_k=N, batch_size=8, progress="none")
    summary = mine(tiny, data, part, top_k=K, batch_size=4, progress="none", limit=LIMIT)
    assert summary.images == LIMIT and summary.done == LIMIT
    sample = set(sample_ids(N, LIMIT).tolist())
    db = part / "results.db"
    assert query(db, "SELECT COUNT(*) FROM images")[0][0] == N          # ids stay manifest positions
    assert {r[0] for r in query(db, "SELECT images FROM unit_stats")} == {LIMIT}
    want = {}
    for layer, unit, rank, value, image_id in query(full / "results.db", "SELECT layer, unit, rank, value, image_id "
                                                    "FROM topk ORDER BY layer, unit, rank"):
        if image_id in sample:
            want.setdefault((layer, unit), []).append((value, image_id))
    got = {}
    for layer, unit, rank, value, image_id in query(db, "SELECT layer, unit, rank, value, image_id FROM topk "
                                                    "ORDER BY layer, unit, rank"):
        got.setdefault((layer, unit), []).append((value, image_id))
    assert got == {key: rows[:K] for key, rows in want.items()}
    run = dict(query(db, "SELECT key, value FROM run"))
    assert run["limit"] == str(LIMIT)


def test_limit_is_part_of_the_configuration(tiny, data, tmp_path):
    mine(tiny, data, tmp_path, top_k=K, batch_size=4, progress="none", limit=LIMIT)
    again = mine(tiny, data, tmp_path, top_k=K, batch_size=4, progress="none", limit=LIMIT)
    assert again.already_finished
    with pytest.raises(ConfigMismatch, match="limit"):
        mine(tiny, data, tmp_path, top_k=K, batch_size=4, progress="none", limit=LIMIT + 1)
    with pytest.raises(ConfigMismatch, match="limit"):
        mine(tiny, data, tmp_path, top_k=K, batch_size=4, progress="none")
    with pytest.raises(MiningError, match="limit"):
        mine(tiny, data, tmp_path / "zero", top_k=K, progress="none", limit=0)


def test_a_limit_at_or_above_the_size_is_the_whole_run(tiny, data, tmp_path):
    mine(tiny, data, tmp_path / "a", top_k=K, batch_size=4, progress="none", limit=N + 5)
    mine(tiny, data, tmp_path / "b", top_k=K, batch_size=4, progress="none")
    assert tables(tmp_path / "a" / "results.db") == tables(tmp_path / "b" / "results.db")


def test_stopped_sample_resumes_to_the_uninterrupted_result(tiny, data, tmp_path):
    """A broken image inside the sample stops a run with max_error_rate=0 after its batch; the run
    resumed on the sample's own grid equals the uninterrupted one."""
    import shutil

    src = tmp_path / "data"
    shutil.copytree(data, src)
    manifest = open_manifest(src)
    victim = manifest.path(12)                   # sample ids 0,3,6,9 | 12,... with batch size 4
    manifest.close()
    with open(victim, "wb") as f:
        f.write(b"not an image")
    ref = tmp_path / "ref"
    mine(tiny, src, ref, top_k=K, batch_size=4, progress="none", limit=LIMIT)
    out = tmp_path / "out"
    with pytest.raises(ErrorRateExceeded) as info:
        mine(tiny, src, out, top_k=K, batch_size=4, progress="none", limit=LIMIT, max_error_rate=0.0)
    assert info.value.summary.done == 8
    summary = mine(tiny, src, out, top_k=K, batch_size=4, progress="none", limit=LIMIT)
    assert summary.status == "finished" and summary.resumed_from == 8 and summary.done == LIMIT
    assert tables(out / "results.db", ("topk", "unit_stats", "errors", "unit_sums", "unit_hist")) == \
        tables(ref / "results.db", ("topk", "unit_stats", "errors", "unit_sums", "unit_hist"))
