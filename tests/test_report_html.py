"""The static report, checked without a browser: pages and files, relative links that resolve,
escaping of hostile names, deterministic montages, the first-layer filters, dead units, a report
from a results.db built by hand (no projections, no model file), and the CLI commands."""
import html
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnviz_fast
from cnnviz_fast.datasets.synthetic import generate
from cnnviz_fast.mining import mine
from cnnviz_fast.graph import Model
from cnnviz_fast.projection import project
from cnnviz_fast.reporting import report

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
_LINK = re.compile(r'(?:href|src)="([^"]*)"|url\(\'([^\']*)\'\)')


def make_run(root: Path, n: int = 9, layers: str = "conv1,conv2") -> Path:
    """n generated images, one of them under a hostile name; with k = n every image is in every
    unit's top-k, so the hostile name is on every unit page."""
    data = root / "data"
    generate(data, n, seed=5)
    first = sorted(data.rglob("*.jpg"))[0]
    first.rename(first.parent / HOSTILE)
    mine("demo", data, root / "out", layers=layers, top_k=n, batch_size=8, progress="none")
    project(root / "out", progress="none")
    report(root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def _pages(out: Path):
    return sorted((out / "report").rglob("*.html"))


def test_pages_exist(run_dir):
    rep = run_dir / "report"
    assert (rep / "index.html").is_file() and (rep / "style.css").is_file()
    assert (rep / "layers/conv1.html").is_file() and (rep / "layers/conv2.html").is_file()
    assert len(list((rep / "units/conv1").glob("unit_*.html"))) == 16
    assert len(list((rep / "units/conv2").glob("unit_*.html"))) == 32
    assert (rep / "img/filters.png").is_file()
    assert (rep / "img/conv1/montage.png").is_file()


def test_every_link_is_relative_and_resolves(run_dir):
    for page in _pages(run_dir):
        text = page.read_text()
        for m in _LINK.finditer(text):
            link = html.unescape(m.group(1) or m.group(2))
            if link.startswith(("data:", "#")):
                continue
            assert not re.match(r"^[a-z]+:|^/", link), f"{page}: absolute link {link}"
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.exists(), f"{page}: broken link {link}"
            assert (run_dir / "report").resolve() in target.parents, f"{page}: {link} leaves report/"


def test_layer_pages_lazy_load_every_unit(run_dir):
    text = (run_dir / "report/layers/conv2.html").read_text()
    assert text.count('loading="lazy"') == 2 * 32
    assert text.count('href="../units/conv2/unit_') == 32


def test_hostile_name_is_escaped(run_dir):
    raw = HOSTILE[:-4]
    escaped = html.escape(HOSTILE)
    unit = (run_dir / "report/units/conv1/unit_0000.html").read_text()
    assert escaped in unit
    for page in _pages(run_dir):
        assert raw not in page.read_text(), f"{page} holds the raw hostile name"


def test_unit_page_content(run_dir):
    text = (run_dir / "report/units/conv2/unit_0003.html").read_text()
    assert "Top-9" in text and "firing rate" in text and "mean of per-image max" in text
    assert text.count('class="rf"') == 9          # the receptive field boxed on every thumbnail
    assert 'href="unit_0002.html"' in text and 'href="unit_0004.html"' in text
    assert "unit_0003_recon.png" in text and "unit_0003_patches.png" in text


def test_index_summary(run_dir):
    text = (run_dir / "report/index.html").read_text()
    for needle in ("Model", "Run", "model_sha256", "dataset", "conv1", "conv2", "montage", "filters"):
        assert needle in text


def test_filters_are_the_first_conv(run_dir):
    from cnnviz_fast import render
    from cnnviz_fast.reporting._data import first_conv_weights

    model = Model.load("demo")
    conv = next(n for n in model.proto.graph.node if n.op_type == "Conv")
    weights = first_conv_weights(model)
    assert weights.shape[0] == next(i.dims[0] for i in model.proto.graph.initializer if i.name == conv.input[1])
    img = np.asarray(Image.open(run_dir / "report/img/filters.png").convert("RGB"))
    assert np.array_equal(img, render.filter_tiles(weights))


def test_montage_is_deterministic(run_dir, tmp_path):
    first = (run_dir / "report/img/conv2/montage.png").read_bytes()
    report(run_dir)
    assert (run_dir / "report/img/conv2/montage.png").read_bytes() == first


def test_callable_module(run_dir):
    index = cnnviz_fast.report(run_dir)
    assert index == run_dir / "report" / "index.html"


def test_dead_units_are_marked(run_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_dir, out)
    con = sqlite3.connect(out / "results.db")
    con.execute("UPDATE unit_stats SET firing_rate = 0, mean_max = 0, max = 0 WHERE layer = 'conv1' AND unit = 2")
    con.commit()
    con.close()
    report(out)
    layer = (out / "report/layers/conv1.html").read_text()
    assert 'class="unit dead" id="u2"' in layer
    assert "dead" in (out / "report/units/conv1/unit_0002.html").read_text()


def test_report_from_handmade_db(tmp_path):
    """The report needs only results.db: no projections, no model file (layers shown as not projected)."""
    out = tmp_path / "out"
    out.mkdir()
    con = sqlite3.connect(out / "results.db")
    con.executescript("""
        CREATE TABLE run(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE images(image_id INTEGER PRIMARY KEY, path TEXT NOT NULL);
        CREATE TABLE topk(layer TEXT, unit INTEGER, rank INTEGER, value REAL, image_id INTEGER, y INTEGER, x INTEGER);
        CREATE TABLE unit_stats(layer TEXT, unit INTEGER, images INTEGER, mean_max REAL, firing_rate REAL, max REAL);
        CREATE TABLE errors(image_id INTEGER PRIMARY KEY, path TEXT NOT NULL, error TEXT NOT NULL);
    """)
    run = {"model_name": '"<b>m</b>"', "model_path": '"/nowhere/m.onnx"', "top_k": "2",
           "layers": '[{"name": "c<1>", "tensor": "t", "kind": "conv", "units": 2, "map_shape": [4, 4]}]',
           "input_size": "[3, 16, 16]"}
    con.executemany("INSERT INTO run VALUES (?, ?)", run.items())
    con.executemany("INSERT INTO images VALUES (?, ?)", [(0, "/d/a.jpg"), (1, f"/d/{HOSTILE}")])
    con.executemany("INSERT INTO topk VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [("c<1>", 0, 0, 3.0, 1, 0, 1), ("c<1>", 0, 1, 2.0, 0, 2, 2), ("c<1>", 1, 0, 1.0, 0, 3, 3)])
    con.executemany("INSERT INTO unit_stats VALUES (?, ?, ?, ?, ?, ?)",
                    [("c<1>", 0, 2, 2.5, 1.0, 3.0), ("c<1>", 1, 2, 0.0, 0.0, 0.0)])
    con.execute("INSERT INTO errors VALUES (2, ?, 'truncated <script>')", (f"/d/x{HOSTILE}",))
    con.commit()
    con.close()
    index = report(out)
    text = index.read_text()
    assert "&lt;b&gt;m&lt;/b&gt;" in text and "c&lt;1&gt;" in text and "not projected" in text
    assert "<script>" not in text and "<b>m</b>" not in text
    unit = (out / "report/units/c_1/unit_0000.html").read_text()
    assert html.escape(f"/d/{HOSTILE}") in unit
    assert 'class="unit dead" id="u1"' in (out / "report/layers/c_1.html").read_text()


def test_cli_project_report_and_stale_exit_status(run_dir, tmp_path):
    exe = [sys.executable, "-m", "cnnviz_fast._cli_report"]
    out = tmp_path / "cli"
    data = tmp_path / "data"
    generate(data, 9, seed=2)
    mine("demo", data, out, layers="conv1", top_k=9, progress="none")
    p = subprocess.run(exe + ["project", str(out), "--quiet"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(exe + ["report", str(out)], capture_output=True, text=True)
    assert p.returncode == 0 and "report: file://" in p.stdout
    victim = sorted(data.rglob("*.jpg"))[0]
    Image.new("RGB", (64, 64), (200, 10, 10)).save(victim, format="JPEG")
    p = subprocess.run(exe + ["project", str(out), "--force", "--quiet"], capture_output=True, text=True)
    assert p.returncode == 3 and "STALE" in p.stderr and str(victim) in p.stderr
    p = subprocess.run(exe + ["report", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert p.returncode == 2 and "cnnviz-fast mine" in p.stderr


def test_cli_run_mines_projects_and_reports(tmp_path):
    data = tmp_path / "data"
    generate(data, 12, seed=4)
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast._cli_report", "run", "demo", str(data), "--out",
                        str(tmp_path / "out"), "--layers", "conv1", "--quiet"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out/projections/conv1/layer.json").is_file()
    assert (tmp_path / "out/report/units/conv1/unit_0015.html").is_file()
