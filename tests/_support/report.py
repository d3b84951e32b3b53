"""A small mined, projected and reported run for the report's tests (HTML and browser)."""
from __future__ import annotations

from pathlib import Path

from cnnviz_fast.datasets.synthetic import generate
from cnnviz_fast.mining import mine
from cnnviz_fast.projection import project
from cnnviz_fast.reporting import report

HOSTILE = "<img src=x onerror=alert(1)>.jpg"


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
