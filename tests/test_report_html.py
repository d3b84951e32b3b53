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
from _support.report import HOSTILE, make_run

_LINK = re.compile(r'(?:href|src)="([^"]*)"|url\(\'([^\']*)\'\)')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def _pages(out: Path):
    return sorted((out / "report").rglob("*.html"))


def test_pages_exist(run_dir):
    rep = run_dir / "report"
    assert (rep / "index.html").is_file() and (rep / "style.css").is_file()
    assert (rep / "layers/conv1.html").is_file() and (rep / "layers/conv2.html").is_file()
    assert len(list((rep / "units/conv1").glob("unit_*.html"))) == 32
    assert len(list((rep / "units/conv2").glob("unit_*.html"))) == 32
    assert (rep / "img/filters.png").is_file()
    assert (rep / "report.js").is_file()


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
    for needle in ("Model", "Run", "sha256", "dataset", "conv1", "conv2", "montage", "filters"):
        assert needle in text


def test_run_panel_is_readable_and_repeats_nothing(run_dir):
    """The Run panel: labelled rows, no JSON braces, no key the Model panel shows."""
    text = (run_dir / "report/index.html").read_text()
    run = text[text.index("<h3>Run</h3>"):text.index("<h2>Layers</h2>")]
    assert "{" not in run and "[" not in run and "&quot;" not in run
    for label in ("top-k", "batch size", "preprocessing", "versions", "dataset"):
        assert f"<th>{label}</th>" in run
    for model_key in ("model_sha256", "model_path", "model_name", "input_size", "sha256"):
        assert model_key not in run


def test_index_montage_tiles_link_to_their_unit_pages(run_dir):
    text = (run_dir / "report/index.html").read_text()
    tiles = re.findall(r'<a class="mtile" href="units/(conv\d)/unit_(\d{4}).html"[^>]*><span class="lbl">unit (\d+)</span>'
                       r'<span class="pair"><img class="\w+" src="img/(conv\d)/unit_(\d{4})_recon.png"', text)
    assert len(tiles) == 16 + 16                          # 16 units drawn per layer (of 32 in each)
    assert len(tiles) == text.count('class="mtile"')
    for layer, unit, label, img_layer, img_unit in tiles:
        assert layer == img_layer and unit == img_unit and int(unit) == int(label)
    assert not (run_dir / "report/img/conv1/montage.png").exists()


def test_layers_table_links_to_layer_pages_and_layer_pages_to_neighbours(run_dir):
    index = (run_dir / "report/index.html").read_text()
    table = index[index.index("<h2>Layers</h2>"):]
    assert '<td><a href="layers/conv1.html">conv1</a></td>' in table
    assert '<td><a href="layers/conv2.html">conv2</a></td>' in table
    first, second = ((run_dir / f"report/layers/{n}.html").read_text() for n in ("conv1", "conv2"))
    assert 'rel="next" href="conv2.html"' in first and 'rel="prev"' not in first
    assert 'rel="prev" href="conv1.html"' in second and 'rel="next"' not in second


def test_layer_cards_carry_the_statistics_they_sort_by(run_dir):
    from cnnviz_fast.results import Results

    text = (run_dir / "report/layers/conv2.html").read_text()
    cards = re.findall(r'<div class="unit[^"]*" id="u(\d+)" data-unit="(\d+)" data-max="([^"]*)" data-mean="([^"]*)" '
                       r'data-rate="([^"]*)" data-dead="([01])">', text)
    assert len(cards) == 32
    with Results(run_dir) as res:
        stats = res.unit_stats("conv2")
    for uid, unit, mx, mean, rate, dead in cards:
        st = stats[int(unit)]
        assert uid == unit and float(mx) == st["max"] and float(mean) == st["mean_max"]
        assert float(rate) == st["firing_rate"] and dead == str(int(st["dead"]))
    assert '<select id="sort">' in text and '<select id="show">' in text and 'src="../report.js"' in text


def test_small_grids_are_enlarged_sharp(run_dir):
    """conv1's 7x7 fields make 25-px grids: drawn with image-rendering: pixelated at a minimum size."""
    layer = (run_dir / "report/layers/conv1.html").read_text()
    assert layer.count('<img class="px"') == 2 * 32
    css = (run_dir / "report/style.css").read_text()
    assert "image-rendering: pixelated" in css and re.search(r"\.pair img \{[^}]*min-width: \d+px", css)


def test_unit_page_histogram_matches_results(run_dir):
    """The unit page draws unit_hist: one bar per non-empty bin, tooltips with the counts."""
    from cnnviz_fast.results import Results

    with Results(run_dir) as res:
        hist = res.unit_hist("conv2")[3]
        images = res.unit_stats("conv2")[3]["images"]
    assert hist.sum() == images == 9
    text = (run_dir / "report/units/conv2/unit_0003.html").read_text()
    svg = text[text.index('<svg class="hist"'):text.index("</svg>")]
    counts = [int(c) for c in re.findall(r": (\d+) images</title>", svg)]
    assert sorted(counts) == sorted(int(c) for c in hist[hist > 0])


def test_unit_page_explains_grey_padding(run_dir):
    """With 9 images of 64 px and conv2's 10 px fields some boxes run off the image somewhere: the
    pages holding such boxes say what the grey is; pages without never do."""
    from cnnviz_fast.reporting._data import gather

    run = gather(run_dir)
    view = next(v for v in run.layers if v.name == "conv2")
    h, w = run.input_hw
    said = 0
    for unit in range(view.info.units):
        off = sum(1 for r in range(view.topk.k) if (b := view.box(unit, r)) and
                  (b[0] < 0 or b[1] < 0 or b[2] > h or b[3] > w))
        text = (run_dir / f"report/units/conv2/unit_{unit:04d}.html").read_text()
        assert ("run off the image" in text) == (off > 0)
        if off:
            assert f"{off} of these 9 receptive fields run off the image" in text and "padding" in text
            said += 1
    assert said > 0


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
    def tiles():
        return re.findall(r'class="mtile" href="([^"]+)"', (run_dir / "report/index.html").read_text())
    first = tiles()
    report(run_dir)
    assert tiles() == first and len(first) == 32


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
    exe = [sys.executable, "-m", "cnnviz_fast"]
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
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "run", "demo", str(data), "--out",
                        str(tmp_path / "out"), "--layers", "conv1", "--quiet"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out/projections/conv1/layer.json").is_file()
    assert (tmp_path / "out/report/units/conv1/unit_0015.html").is_file()


def test_first_layer_page_explains_repeating_tiles(run_dir):
    """Layer 1's reconstructions are its filters scaled: its page says so, and only its page."""
    line = "reconstruction is the unit's filter itself"
    assert line in (run_dir / "report/layers/conv1.html").read_text()
    assert line not in (run_dir / "report/layers/conv2.html").read_text()
