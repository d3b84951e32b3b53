"""The results package: the reader API on a mined folder, checked against plain SQL on the same
file, and the mined-model loader's sha256 check (also through `cnnviz-fast project`)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import onnx
import pytest

from cnnviz_fast.datasets.synthetic import generate
from cnnviz_fast.graph import Model
from cnnviz_fast.mining import mine
from cnnviz_fast.results import DB_NAME, MinedModelError, Results, ResultsError, load_mined_model, open_results

K = 3
LAYERS = ("conv1", "conv2")


def sql(db, query, *args):
    con = sqlite3.connect(db)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A folder mined from a private copy of the demo model (so a test may change or remove it),
    over 16 generated images and one broken file."""
    root = tmp_path_factory.mktemp("results")
    model = root / "model.onnx"
    shutil.copyfile(Model.load("demo").path, model)
    data = root / "data"
    generate(data, 16, seed=3)
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = root / "out"
    mine(str(model), data, out, layers=",".join(LAYERS), top_k=K, batch_size=4, workers=1, progress="none")
    return out, model


def test_reader_matches_the_tables(mined):
    out, model = mined
    db = out / DB_NAME
    with Results(out) as res:
        assert res.status == "finished" and res.k == K
        assert [info.name for info in res.layers()] == list(LAYERS)
        assert res.run["model_sha256"] == Model.load(model).sha256 and res.run["top_k"] == K
        assert res.counts() == {"images": 17, "errors": 1}
        [(image_id, path, reason)] = res.errors()
        assert path.endswith("broken.jpg") and reason and sql(db, "SELECT image_id FROM images WHERE path = ?",
                                                              path) == [(image_id,)]
        for info in res.layers():
            top, stats = res.topk(info.name), res.unit_stats(info.name)
            assert top.digest() == res.topk(info).digest()  # a name or a LayerInfo
            assert (top.units, top.k) == (info.units, K)
            for unit, rank, value, iid, y, x in sql(db, "SELECT unit, rank, value, image_id, y, x FROM topk "
                                                    "WHERE layer = ?", info.name):
                assert (top.values[unit, rank], top.image_ids[unit, rank]) == (value, iid)
                assert (top.ys[unit, rank], top.xs[unit, rank]) == (y, x)
            assert int((top.image_ids >= 0).sum()) == sql(db, "SELECT COUNT(*) FROM topk WHERE layer = ?",
                                                          info.name)[0][0]
            for unit, images, mean_max, rate, mx in sql(db, "SELECT unit, images, mean_max, firing_rate, max "
                                                        "FROM unit_stats WHERE layer = ?", info.name):
                s = stats[unit]
                assert (s["images"], s["mean_max"], s["firing_rate"], s["max"]) == (images, mean_max, rate, mx)
                assert s["dead"] == (images > 0 and rate == 0.0)
            # 16 good images: every unit saw all of them, and values come rank 0 strongest.
            assert {s["images"] for s in stats} == {16}
            assert np.all(np.diff(top.values, axis=1) <= 0)
            want = dict(sql(db, "SELECT image_id, path FROM images"))
            assert res.paths(top.image_ids) == {int(i): want[int(i)] for i in np.unique(top.image_ids)}


def test_reader_refusals(mined, tmp_path):
    out, _ = mined
    with Results(out) as res, pytest.raises(ResultsError, match="'conv9' was not mined.*conv1, conv2"):
        res.layer("conv9")
    with pytest.raises(ResultsError, match="cnnviz-fast mine"):
        Results(tmp_path)
    assert not (tmp_path / DB_NAME).exists()  # read-only: a missing database is not created
    (tmp_path / DB_NAME).write_bytes(b"junk" * 500)
    with pytest.raises(ResultsError, match="not a readable SQLite database"):
        Results(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    sql(other / DB_NAME, "CREATE TABLE run(key TEXT, value TEXT)")
    with pytest.raises(ResultsError, match="no table images, topk, unit_stats"):
        Results(other)


def test_the_reader_never_writes(mined):
    out, _ = mined
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(DB_NAME)}
    with Results(out) as res:
        for info in res.layers():
            res.topk(info), res.unit_stats(info)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(DB_NAME)} == before


def test_ctrl_c_just_after_a_commit_keeps_the_checkpoint(tmp_path):
    """Ctrl-C raised as COMMIT returns: the KeyboardInterrupt gets through (no failed ROLLBACK
    in its place) and the checkpoint it interrupted stands."""

    class Manifest:
        def paths(self):
            return [(0, "a.jpg"), (1, "b.jpg")]

    class CommitThenInterrupt:
        def __init__(self, con):
            self.con = con

        def __getattr__(self, name):
            return getattr(self.con, name)

        def execute(self, statement, *args):
            cursor = self.con.execute(statement, *args)
            if statement == "COMMIT":
                raise KeyboardInterrupt
            return cursor

    db, resumed = open_results(tmp_path, {"top_k": 2}, {"model_path": None}, Manifest())
    try:
        assert not resumed
        real, db.con = db.con, CommitThenInterrupt(db.con)
        with pytest.raises(KeyboardInterrupt):
            db.checkpoint([], [], [(1, "b.jpg", "broken")], {"images_done": 2, "next_batch": 1})
        with pytest.raises(KeyboardInterrupt):
            db.set_run(workers=3)
        db.con = real
        assert db.progress()["images_done"] == 2 and db.error_count() == 1 and db.run_info()["workers"] == 3
    finally:
        db.close()


def test_loader_finds_and_checks_the_mined_model(mined, tmp_path):
    out, model = mined
    with Results(out) as res:
        loaded = load_mined_model(res)
        assert loaded.sha256 == res.run["model_sha256"] and loaded.path.resolve() == model.resolve()
        assert load_mined_model(res, loaded) is loaded

        changed = tmp_path / "changed.onnx"
        proto = onnx.load(str(model))
        proto.doc_string = "retrained"  # another file, another sha256, same graph
        onnx.save(proto, str(changed))
        with pytest.raises(MinedModelError, match="changed since mining") as err:
            load_mined_model(res, changed)
        assert "--model" in str(err.value) and "--model" not in err.value.reason

        junk = tmp_path / "junk.onnx"
        junk.write_bytes(b"no protobuf here" * 10)
        with pytest.raises(MinedModelError, match="cannot load model.*--model"):
            load_mined_model(res, junk)


def test_project_refuses_a_changed_model_naming_model_option(mined, tmp_path):
    src, model = mined
    out = tmp_path / "out"
    shutil.copytree(src, out)
    saved = tmp_path / "original.onnx"
    shutil.copyfile(model, saved)
    proto = onnx.load(str(model))
    proto.doc_string = "retrained"
    try:
        onnx.save(proto, str(model))
        p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "project", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "changed since mining" in p.stderr and "--model" in p.stderr
        os.remove(model)
        p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "project", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "is gone" in p.stderr and "--model" in p.stderr and "Traceback" not in p.stderr
        # The report still comes out without the model, and says what it left out.
        p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "report", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert "is gone: filters left out" in (out / "report" / "index.html").read_text()
        p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "project", str(out), "--quiet",
                            "--layers", "conv1", "--model", str(saved)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert (out / "projections" / "conv1" / "layer.json").is_file()
    finally:
        shutil.copyfile(saved, model)
