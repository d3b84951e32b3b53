"""BatchLoader over an id range, an explicit id list, or packed: the manifest's batch grid is kept
(or dropped, packed), and every image equals the same id's image from a full pass."""
from __future__ import annotations

import numpy as np
import pytest

from cnnviz_fast.data import BatchLoader, Preprocess, open_manifest
from _support.mining import PRE, jpeg, photo

BROKEN = (3, 10, 22)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    for k in range(27):
        (root / f"{k:02d}.jpg").write_bytes(b"broken" if k in BROKEN else jpeg(photo(k, (40 + k, 36))))
    m = open_manifest(root)
    yield m
    m.close()


@pytest.fixture(scope="module", params=["float", "uint8"])
def full(manifest, request):
    """Every image of one full pass, by id (copies: batch buffers are reused)."""
    pre = Preprocess.from_metadata(PRE)
    with BatchLoader(manifest, pre, 4, 2, layout=request.param) as loader:
        out = {int(i): row.copy() for b in loader for i, row in zip(b.ids, b.images)}
    return request.param, out


def _run(manifest, layout, **kw):
    pre = Preprocess.from_metadata(PRE)
    with BatchLoader(manifest, pre, 4, kw.pop("workers", 3), layout=layout, **kw) as loader:
        numbers = loader.batch_numbers()
        batches = [(b.index, b.start, b.stop, b.size, b.ids.tolist(), [e[0] for e in b.errors],
                    [r.copy() for r in b.images]) for b in loader]
    assert numbers == [b[0] for b in batches]
    return batches


def _same_images(batches, full):
    for *_, ids, _, rows in batches:
        assert len(ids) == len(rows)
        for i, row in zip(ids, rows):
            np.testing.assert_array_equal(row, full[i])


def test_range_keeps_the_grid(manifest, full):
    layout, images = full
    batches = _run(manifest, layout, ids=range(5, 19))
    assert [b[:6] for b in batches] == [(1, 4, 8, 3, [5, 6, 7], []), (2, 8, 12, 4, [8, 9, 11], [10]),
                                        (3, 12, 16, 4, [12, 13, 14, 15], []), (4, 16, 20, 3, [16, 17, 18], [])]
    _same_images(batches, images)
    whole = _run(manifest, layout, ids=range(0, 27))
    assert [b[:4] for b in whole] == [(i, 4 * i, min(4 * i + 4, 27), min(4, 27 - 4 * i)) for i in range(7)]
    assert _run(manifest, layout, ids=range(8, 8)) == []


def test_range_and_start_batch(manifest, full):
    layout, images = full
    batches = _run(manifest, layout, ids=range(6, 27), start_batch=4)
    assert [b[0] for b in batches] == [4, 5, 6] and batches[-1][4] == [24, 25, 26]
    _same_images(batches, images)


def test_list_is_sorted_deduplicated_and_kept_on_the_grid(manifest, full):
    layout, images = full
    batches = _run(manifest, layout, ids=[26, 2, 3, 3, 9, 22, 1, 17], workers=1)
    assert [b[:6] for b in batches] == [(0, 0, 4, 3, [1, 2], [3]), (2, 8, 12, 1, [9], []),
                                        (4, 16, 20, 1, [17], []), (5, 20, 24, 1, [], [22]),
                                        (6, 24, 27, 1, [26], [])]
    _same_images(batches, images)
    assert _run(manifest, layout, ids=np.array([], np.int64)) == []


def test_packed_list_is_cut_in_runs_of_batch_size(manifest, full):
    layout, images = full
    batches = _run(manifest, layout, ids=[25, 0, 7, 3, 8, 9, 16, 26, 12], packed=True)
    assert [b[:6] for b in batches] == [(0, 0, 9, 4, [0, 7, 8], [3]), (1, 9, 26, 4, [9, 12, 16, 25], []),
                                        (2, 26, 27, 1, [26], [])]
    _same_images(batches, images)
    assert [b[4] for b in _run(manifest, layout, ids=range(20, 27), packed=True)] == [[20, 21, 23], [24, 25, 26]]


def test_bad_id_requests(manifest):
    pre = Preprocess.from_metadata(PRE)
    for ids, match in ((range(0, 28), "outside"), (range(-1, 3), "outside"), (range(0, 9, 2), "step 1"),
                       ([0, 27], "must be in 0..26"), ([-2], "must be in 0..26")):
        with pytest.raises(ValueError, match=match):
            BatchLoader(manifest, pre, 4, 1, ids=ids)


def test_release_starts_the_next_batch_before_it_is_asked_for(manifest, full):
    """depth 1 decodes a batch only when the consumer asks for it, unless the consumer releases
    the batch it holds: then the next one is being read already, and every batch still equals
    the full pass."""
    import threading

    layout, images = full
    started = threading.Event()

    class Watched:
        def __getattr__(self, name):
            return getattr(manifest, name)

        def __len__(self):
            return len(manifest)

        def read(self, i):
            if i == 4:  # the first image of batch 1
                started.set()
            return manifest.read(i)

    pre = Preprocess.from_metadata(PRE)
    with BatchLoader(Watched(), pre, 4, 2, depth=1, layout=layout) as loader:
        it = iter(loader)
        first = next(it)
        assert not started.is_set()  # nothing beyond the batch in hand was submitted
        rows = {int(i): r.copy() for i, r in zip(first.ids, first.images)}
        loader.release(first)
        assert started.wait(30)
        loader.release(first)  # twice is harmless
        for b in it:
            rows.update({int(i): r.copy() for i, r in zip(b.ids, b.images)})
            loader.release(b)
    assert sorted(rows) == sorted(images)
    for i, r in rows.items():
        np.testing.assert_array_equal(r, images[i])
