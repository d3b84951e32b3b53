"""The projection pass (`cnnviz-fast project DIR`): its grids and arrays equal the Projector's output
for the same preprocessed images, patches are the right boxes, layers resume, a stale dataset or a
changed model is reported."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnviz_fast import render
from cnnviz_fast.data import Preprocess, decode, open_manifest
from cnnviz_fast.datasets.synthetic import generate
from cnnviz_fast.mining import mine
from cnnviz_fast.graph import Model
from cnnviz_fast.projection import ProjectionError, project
from cnnviz_fast.results import Results
from cnnviz_fast.projection import Projector

LAYERS = "conv1,conv2,conv3"


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    root = tmp_path_factory.mktemp("project_pass")
    generate(root / "data", 120, seed=3)
    mine("demo", root / "data", root / "out", layers=LAYERS, top_k=9, batch_size=16, progress="none")
    summary = project(root / "out", save_arrays=True, progress="none")
    return root, summary


def _tile(grid_png, rank, r, cols=3, pad=1):
    g = np.asarray(Image.open(grid_png).convert("RGB"))
    y, x = pad + (rank // cols) * (r + pad), pad + (rank % cols) * (r + pad)
    return g[y:y + r, x:x + r]


def test_summary_and_markers(projected):
    root, summary = projected
    assert summary.projected == LAYERS.split(",")
    assert summary.stale == []
    assert summary.projections == (32 + 32 + 64) * 9
    for name in LAYERS.split(","):
        marker = json.loads((root / "out/projections" / name / "layer.json").read_text())
        assert marker["k"] == 9 and np.all(np.asarray(marker["status"]) == 1)
        assert (root / "out/projections" / name / "unit_0000_recon.png").is_file()
        assert np.load(root / "out/projections" / name / "recon.npy").dtype == np.float16
    assert any((root / "out/projections/images").glob("*.jpg"))


@pytest.mark.parametrize("layer_name", LAYERS.split(","))
def test_grids_match_projector(projected, layer_name):
    root, _ = projected
    out = root / "out"
    model = Model.load("demo")
    layer = model.layer(layer_name)
    r = layer.rf_size[0]
    with Results(out) as res:
        topk = res.topk(next(i for i in res.layers() if i.name == layer_name))
        pre = Preprocess.from_dict(res.run["preprocess"])
    manifest = open_manifest(root / "data")
    projector = Projector(model, device="cpu")
    recon = np.load(out / "projections" / layer_name / "recon.npy")
    patches = np.load(out / "projections" / layer_name / "patches.npy")
    rng = np.random.default_rng(0)
    for unit in rng.choice(layer.units, size=4, replace=False):
        for rank in (0, 4, 8):
            image_id = int(topk.image_ids[unit, rank])
            y, x = int(topk.ys[unit, rank]), int(topk.xs[unit, rank])
            img = decode(manifest.read(image_id), pre)[None]
            want = projector.project_boxes(img, layer=layer_name, seeds=[(0, int(unit), y, x)])[0]
            np.testing.assert_allclose(recon[unit, rank].astype(np.float32), want, rtol=2e-3,
                                       atol=2e-3 * np.abs(want).max())
            png = out / "projections" / layer_name / f"unit_{unit:04d}_recon.png"
            diff = np.abs(_tile(png, rank, r).astype(int) - render.display(want).astype(int))
            assert diff.max() <= 1, (unit, rank)
            patch = render.cut(img[0], layer.receptive_field(y, x))
            np.testing.assert_allclose(patches[unit, rank].astype(np.float32), patch, atol=2e-2)
            png = out / "projections" / layer_name / f"unit_{unit:04d}_patches.png"
            shown = render.unnormalise(patch, pre.mean, pre.std, pre.scale, pre.channel_order)
            assert np.array_equal(_tile(png, rank, r), shown)


def test_resume_skips_done_layers_and_force_redoes(projected):
    root, _ = projected
    again = project(root / "out", progress="none")
    assert again.projected == [] and again.skipped == LAYERS.split(",")
    redo = project(root / "out", layers="conv1", force=True, progress="none")
    assert redo.projected == ["conv1"]


def test_unknown_layer_is_refused(projected):
    root, _ = projected
    with pytest.raises(ProjectionError, match="not mined"):
        project(root / "out", layers="conv9", progress="none")


@pytest.fixture()
def copy_of_run(projected, tmp_path):
    """The mined run and its dataset, copied (results.db records the data folder's path, so the copy
    points at the original folder: tests that alter images use their own dataset)."""
    root, _ = projected
    shutil.copytree(root / "data", tmp_path / "data")
    mine("demo", tmp_path / "data", tmp_path / "out", layers="conv1", top_k=9, batch_size=16, progress="none")
    return tmp_path


def test_file_changed_after_mining_is_reported(copy_of_run):
    root = copy_of_run
    with Results(root / "out") as res:
        info = res.layers()[0]
        topk = res.topk(info)
        target = int(topk.image_ids[3, 0])
        victim = res.paths([target])[target]
    # Another picture under the same name: ids still match, the activation does not.
    Image.new("RGB", (64, 64), (128, 128, 128)).save(victim, format="JPEG")
    summary = project(root / "out", progress="none")
    assert summary.stale, "a changed file must be reported"
    assert all(s["image_id"] == target for s in summary.stale)
    assert any(s["unit"] == 3 and s["rank"] == 0 for s in summary.stale)
    assert "STALE" in str(summary) and victim in str(summary)
    marker = json.loads((root / "out/projections/conv1/layer.json").read_text())
    assert marker["status"][3][0] == 2
    # Not drawn: the tile is the red hatching, not a reconstruction.
    tile = _tile(root / "out/projections/conv1/unit_0003_recon.png", 0, 5)
    assert np.array_equal(tile, render.stale_tile(5, 5))


def test_vanished_file_is_reported(copy_of_run):
    root = copy_of_run
    with Results(root / "out") as res:
        target = int(res.topk(res.layers()[0]).image_ids[0, 0])
        victim = res.paths([target])[target]
    # Same names (so the manifest is unchanged) but unreadable bytes.
    with open(victim, "wb") as f:
        f.write(b"not an image any more")
    summary = project(root / "out", progress="none")
    assert summary.stale and all(s["recomputed"] is None for s in summary.stale)
    assert "cannot be read" in summary.stale[0]["reason"]


def test_dataset_with_files_added_is_refused(copy_of_run):
    root = copy_of_run
    shutil.copy(next((root / "data").rglob("*.jpg")), root / "data" / "extra.jpg")
    with pytest.raises(ProjectionError, match="dataset changed"):
        project(root / "out", progress="none")


def test_changed_model_is_refused(tmp_path):
    import onnx
    from onnx import numpy_helper

    generate(tmp_path / "data", 12, seed=1)
    proto = onnx.load(Model.load("demo").path)
    onnx.save(proto, tmp_path / "m.onnx")
    mine(tmp_path / "m.onnx", tmp_path / "data", tmp_path / "out", layers="conv1", progress="none")
    init = proto.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(ProjectionError, match="model changed"):
        project(tmp_path / "out", progress="none")


def test_unfinished_mining_is_refused(tmp_path):
    import sqlite3

    generate(tmp_path / "data", 12, seed=1)
    mine("demo", tmp_path / "data", tmp_path / "out", layers="conv1", progress="none")
    con = sqlite3.connect(tmp_path / "out/results.db")
    con.execute("UPDATE progress SET value = 'running' WHERE key = 'status'")
    con.commit()
    con.close()
    with pytest.raises(ProjectionError, match="not finished"):
        project(tmp_path / "out", progress="none")


def test_folder_in_use_is_refused(projected):
    import fcntl
    import os

    root, _ = projected
    fd = os.open(root / "out/.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # flock locks belong to the open file description: a second open in this process conflicts too.
        with pytest.raises(ProjectionError, match="in use"):
            project(root / "out", progress="none")
    finally:
        os.close(fd)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_image_cache_decodes_through_the_loader_the_crops_of_load_crop(tmp_path, monkeypatch, order):
    """The cache's crops (RGB whatever the model's channel order) equal `load_crop` of the same
    files, failures carry the loader's reason, and the decoding is the loader's (one pool)."""
    from cnnviz_fast.data import BatchLoader, load_crop
    from cnnviz_fast.projection import _images

    paths = generate(tmp_path / "d", 150, seed=4, size=48)
    paths[7].write_bytes(b"broken")
    manifest = open_manifest(tmp_path / "d")
    pre = Preprocess.from_metadata({"resize": 40, "crop": 36, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25],
                                    "channel_order": order})
    calls = []

    class Spy(BatchLoader):
        def __init__(self, *args, **kw):
            calls.append(kw)
            super().__init__(*args, **kw)

    monkeypatch.setattr(_images, "BatchLoader", Spy)
    ids = [149, 7, 3, 64, 65, 66, 0, 120, 3] + list(range(10, 140, 2))
    cache = _images.ImageCache(manifest, pre, ids, tmp_path / "scratch.npy", workers=2, thumbs=tmp_path / "t")
    try:
        assert len(calls) == 1 and calls[0]["packed"] and calls[0]["layout"] == "uint8"
        assert len(cache) == len(set(ids)) and list(cache.failed) == [7]
        assert "not an image" in cache.failed[7]
        for i in sorted(set(ids) - {7}):
            np.testing.assert_array_equal(cache.crop(i), load_crop(manifest.read(i), pre))
            np.testing.assert_array_equal(cache.normalised([i])[0], decode(manifest.read(i), pre))
        assert sorted(int(p.stem) for p in (tmp_path / "t").iterdir()) == sorted(set(ids) - {7})
    finally:
        cache.close()
        manifest.close()
    assert not (tmp_path / "scratch.npy").exists()
