"""The report tells the truth about its run (issue 11): projections of another top-k (the folder
was mined again with --overwrite) are not shown and are marked stale; unfinished and failed runs
say so at the top; a run where every image fails exits 3 by default; bidirectional-control
characters in names are shown as visible escapes; --relative-paths hides the machine's folders."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cnnviz_fast.errors import MAX_ERROR_RATE, ErrorRateExceeded
from cnnviz_fast.mining import mine
from cnnviz_fast.projection import project
from cnnviz_fast.reporting import report
from _support.mining import tiny  # noqa: F401

RLO = "\u202e"


def _generate(root, n, seed):
    from cnnviz_fast.datasets.synthetic import generate

    generate(root, n, seed=seed, size=36)
    return root


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("report_integrity")
    return _generate(base / "a", 24, 7), _generate(base / "b", 24, 8)


def _html(out: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((out / "report").rglob("*.html")))


def cnnviz(*args):
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_projections_of_an_overwritten_run_are_marked_stale_not_shown(tiny, two_datasets, tmp_path):  # noqa: F811
    a, b = two_datasets
    out = tmp_path / "out"
    mine(tiny, a, out, top_k=3, batch_size=8, workers=1, progress="none")
    project(out, device="cpu", progress="none")
    report(out)
    assert list((out / "report" / "img").rglob("unit_*_recon.png"))     # run A's pictures are there
    mine(tiny, b, out, top_k=3, batch_size=8, workers=1, progress="none", overwrite=True)
    report(out)
    html = _html(out)
    assert "STALE PROJECTIONS" in html and f"cnnviz-fast project {out}" in html
    assert not list((out / "report" / "img").rglob("unit_*_recon.png")), "run A's grids shown beside run B's paths"
    project(out, device="cpu", progress="none")       # re-projected: the pictures are back, no banner
    report(out)
    assert "STALE PROJECTIONS" not in _html(out)
    assert list((out / "report" / "img").rglob("unit_*_recon.png"))


def test_an_unfinished_run_says_so(tiny, two_datasets, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    mine(tiny, two_datasets[0], out, top_k=3, batch_size=8, workers=1, progress="none")
    con = sqlite3.connect(out / "results.db")   # as a run killed after its second checkpoint leaves it
    con.executescript("UPDATE progress SET value = 'running' WHERE key = 'status';"
                      "UPDATE progress SET value = 2 WHERE key = 'next_batch';"
                      "UPDATE progress SET value = 16 WHERE key = 'images_done';")
    con.close()
    report(out)
    html = _html(out)
    assert "UNFINISHED: mining stopped at 16 of 24 images" in html


def test_a_run_where_every_image_fails_exits_3_by_default_and_the_report_says_failed(tiny, tmp_path):  # noqa: F811
    data = tmp_path / "broken"
    data.mkdir()
    for i in range(20):
        (data / f"{i:03d}.jpg").write_bytes(b"not an image %d" % i)
    out = tmp_path / "out"
    p = cnnviz("mine", tiny, data, "--out", out, "--batch-size", "4", "--quiet")
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    assert f"max" in p.stderr and str(MAX_ERROR_RATE) in p.stderr
    with pytest.raises(ErrorRateExceeded):
        mine(tiny, data, out, batch_size=4, workers=1, progress="none")
    p = cnnviz("report", out, "--quiet")
    assert p.returncode == 0, p.stderr
    html = _html(out)
    assert "FAILED:" in html and "UNFINISHED" in html    # stopped by its error budget: both are true


def test_bidi_controls_in_names_are_neutralised_and_paths_can_be_relative(tiny, two_datasets, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(two_datasets[0], data)
    good = next(data.rglob("*.jpg"))
    shutil.copy(good, good.parent / f"evil{RLO}gpj.exe.jpg")
    (data / f"broken{RLO}txt.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    mine(tiny, data, out, top_k=30, batch_size=8, workers=1, progress="none")
    report(out)
    html = _html(out)
    assert RLO not in html
    assert "evil\\u202egpj.exe.jpg" in html and "broken\\u202etxt.jpg" in html
    assert str(data) in html
    p = cnnviz("report", out, "--relative-paths", "--quiet")
    assert p.returncode == 0, p.stderr
    html = _html(out)
    assert str(data) not in html and str(Path(tiny).parent) not in html   # neither dataset nor model folder
    rel = good.parent.relative_to(data) / "evil\\u202egpj.exe.jpg"
    assert str(rel) in html
