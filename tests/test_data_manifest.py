"""Manifests: stable image ids for folders, list files and tar shards; the loader's batches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnnviz_fast.data import BatchLoader, DecodeError, Preprocess, decode, open_manifest
from cnnviz_fast.data._tar import expand_braces
from _support.mining import PRE, jpeg, make_tar, photo


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "train"
    names = ["n02/b.JPEG", "n01/z.jpg", "n01/a.png", "n01/sub/c.jpeg", "a.b/x.jpg", "n10/k.gif",
             "n01/.hidden.jpg", ".cache/y.jpg", "n01/labels.txt", "n01/README"]
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(photo(i)))
    return root


def test_folder_ids_are_sorted_relative_paths(tree):
    m = open_manifest(tree)
    names = [m.name(i) for i in range(len(m))]
    assert names == sorted(["n02/b.JPEG", "n01/z.jpg", "n01/a.png", "n01/sub/c.jpeg", "a.b/x.jpg", "n10/k.gif"])
    assert m.path(0) == str(tree / names[0])
    assert open_manifest(str(tree)).fingerprint() == m.fingerprint()
    assert open_manifest(m.spec).fingerprint() == m.fingerprint()


def test_folder_follows_symlinked_class_folders_once(tree, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "q.jpg").write_bytes(jpeg(photo(0)))
    os.symlink(other, tree / "n05")
    os.symlink(tree, tree / "n01" / "loop")
    m = open_manifest(tree)
    names = [m.name(i) for i in range(len(m))]
    assert "n05/q.jpg" in names
    assert not any("loop" in n for n in names)


def test_list_file_keeps_file_order(tree, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# a comment\ntrain/n02/b.JPEG\n\n{tree}/n01/a.png\ntrain/n01/labels.txt\n")
    m = open_manifest(listing)
    assert len(m) == 3
    assert m.path(0) == str(tmp_path / "train/n02/b.JPEG")
    assert m.read(1) == (tree / "n01/a.png").read_bytes()


def test_read_reasons(tmp_path):
    listing = tmp_path / "files.txt"
    (tmp_path / "folder.jpg").mkdir()
    listing.write_text("gone.jpg\nfolder.jpg\n")
    m = open_manifest(listing)
    with pytest.raises(DecodeError, match="not found"):
        m.read(0)
    with pytest.raises(DecodeError, match="folder"):
        m.read(1)


def test_brace_expansion():
    assert expand_braces("s-{000..003}.tar") == [f"s-{i:03d}.tar" for i in range(4)]
    assert expand_braces("{a,b}/s{8..10}.tar") == ["a/s8.tar", "a/s9.tar", "a/s10.tar", "b/s8.tar", "b/s9.tar", "b/s10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError):
        expand_braces("s{3..1}.tar")


def test_tar_shards_in_shard_then_member_order(tmp_path):
    blobs = {f"{k:02d}": jpeg(photo(k)) for k in range(7)}
    make_tar(tmp_path / "s-000.tar", [("z.jpg", blobs["00"]), ("z.cls", b"3"), ("a.jpg", blobs["01"])])
    make_tar(tmp_path / "s-001.tar", [("k/m.png", blobs["02"]), ("k/m.json", b"{}"), ("b.jpeg", blobs["03"])])
    m = open_manifest(str(tmp_path / "s-{000..001}.tar"))
    assert [m.name(i) for i in range(len(m))] == ["s-000.tar/z.jpg", "s-000.tar/a.jpg", "s-001.tar/k/m.png", "s-001.tar/b.jpeg"]
    assert [m.read(i) for i in range(4)] == [blobs["00"], blobs["01"], blobs["02"], blobs["03"]]
    assert not m.warnings
    assert not any((tmp_path / n).exists() for n in ("z.jpg", "a.jpg", "k"))  # nothing extracted


def test_tar_truncated_mid_member(tmp_path):
    members = [(f"{k}.jpg", jpeg(photo(k, (64, 64)))) for k in range(4)]
    shard = make_tar(tmp_path / "s.tar", members)
    data = shard.read_bytes()
    cut = data.index(members[2][1]) + len(members[2][1]) // 2  # half of member 2's data
    shard.write_bytes(data[:cut])
    m = open_manifest(shard)
    assert len(m) == 3 and m.warnings and "truncated" in m.warnings[0]
    assert m.read(1) == members[1][1]
    with pytest.raises(DecodeError, match="truncated mid-member"):
        m.read(2)


def test_tar_cut_at_a_header_is_reported(tmp_path):
    members = [(f"{k}.jpg", jpeg(photo(k))) for k in range(3)]
    shard = make_tar(tmp_path / "s.tar", members)
    data = shard.read_bytes()
    cut = data.index(members[1][1]) + len(members[1][1])
    cut = -(-cut // 512) * 512 + 100  # inside member 2's header
    shard.write_bytes(data[:cut])
    m = open_manifest(shard)
    assert len(m) == 2 and m.warnings and "end-of-archive" in m.warnings[0]


def test_bad_data_arguments(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        open_manifest(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_manifest(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        open_manifest(str(tmp_path / "s-{0..2}.tar"))
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="compressed"):
        open_manifest(tmp_path / "x.tar.gz")


@pytest.mark.parametrize("workers", [1, 3])
def test_loader_fixed_batches_and_errors(tmp_path, workers):
    root = tmp_path / "d"
    root.mkdir()
    for k in range(11):
        (root / f"{k:02d}.jpg").write_bytes(b"broken" if k in (3, 4, 10) else jpeg(photo(k)))
    m = open_manifest(root)
    pre = Preprocess.from_metadata(PRE)
    with BatchLoader(m, pre, batch_size=4, workers=workers, start_batch=1) as loader:
        batches = list(loader)
    assert [(b.index, b.start, b.stop) for b in batches] == [(1, 4, 8), (2, 8, 11)]
    assert [list(b.ids) for b in batches] == [[5, 6, 7], [8, 9]]
    assert [e[0] for b in batches for e in b.errors] == [4, 10]
    assert "not an image" in batches[0].errors[0][2]
    # Images were views of recycled buffers: re-run and compare each row with a direct decode.
    with BatchLoader(m, pre, batch_size=4, workers=workers) as loader:
        for b in loader:
            for row, i in zip(b.images, b.ids):
                np.testing.assert_array_equal(row, decode(m.read(int(i)), pre))
