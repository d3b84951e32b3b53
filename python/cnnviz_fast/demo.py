"""The one-command demo: generated images, the shipped demo model, mine → project → report.

    from cnnviz_fast.demo import demo
    index = demo("cnnviz-demo")        # about a minute on two CPU cores; returns report/index.html

The images come from `cnnviz_fast.datasets.synthetic` (deterministic: the same seed gives the same
files) into OUT/images/; results, projections and the report go to OUT/ like any run. Running it
again reuses what is already there (finished mining and projected layers are not redone).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from .errors import DemoError

DEMO_IMAGES = 3000
_STAMP = ".generated.json"


def demo(out: str | os.PathLike = "cnnviz-demo", *, images: int = DEMO_IMAGES, seed: int = 0, device: str = "auto",
         layers: str | None = None, quiet: bool = False, stream: TextIO | None = None) -> Path:
    """Run the whole pipeline on `images` generated 64×64 images; returns the report's index.html.

    layers: None (conv1…conv4) or comma-separated names (tests use fewer to stay fast)."""
    from .mining import ConfigMismatch, MiningError, mine
    from .projection import ProjectionError, project
    from .reporting import report

    if images < 10:
        raise DemoError(f"the demo needs at least 10 images, got {images}")
    log = stream if stream is not None else sys.stdout
    say = (lambda text: None) if quiet else (lambda text: print(text, file=log, flush=True))
    out = Path(out)
    data = out / "images"
    times = {}
    t = time.monotonic()
    made = _images(data, images, seed)
    times["generate"] = time.monotonic() - t
    say(f"images: {images:,} generated 64×64 JPEGs in {data}" + ("" if made else " (already there)"))
    progress = "none" if quiet else "auto"
    t = time.monotonic()
    try:
        try:
            mine("zoo:demo", data, out, layers=layers, device=device, progress=progress, stream=stream)
        except ConfigMismatch:  # the demo owns its folder: replace a run of other settings
            mine("zoo:demo", data, out, layers=layers, device=device, progress=progress, stream=stream, overwrite=True)
    except MiningError as exc:
        raise DemoError(f"mining failed: {exc}") from None
    times["mine"] = time.monotonic() - t
    t = time.monotonic()
    try:
        summary = project(out, device=device, progress=progress, stream=stream)
    except ProjectionError as exc:
        raise DemoError(f"projection failed: {exc}") from None
    times["project"] = time.monotonic() - t
    say(str(summary))
    t = time.monotonic()
    index = report(out)
    times["report"] = time.monotonic() - t
    say("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + f"; total {sum(times.values()):.1f} s")
    say(f"report: {index.resolve().as_uri()}")
    return index


def _images(folder: Path, n: int, seed: int) -> bool:
    """Generate the images unless the folder already holds this exact set; True when generated."""
    from .datasets.synthetic import generate

    stamp = folder / _STAMP
    want = {"n": n, "seed": seed, "size": 64}
    try:
        if json.loads(stamp.read_text()) == want:
            return False
    except (OSError, ValueError):
        pass
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    generate(folder, n, seed=seed, size=64)
    stamp.write_text(json.dumps(want))
    return True
