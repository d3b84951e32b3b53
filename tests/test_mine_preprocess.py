"""Preprocessing given without editing the model file: `mine(preprocess=...)` and `--preprocess`.

The override changes what is mined (it is part of the configuration stored in results.db), leaves a
caller's Model untouched, and a bad value is a clear error (exit 2), not a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from cnnviz_fast.graph import Model
from cnnviz_fast.mining import mine
from cnnviz_fast.results import Results
from _support.mining import images, tiny  # noqa: F401

PLAIN = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "scale": 255.0}


def _run(out):
    with Results(out) as res:
        layer = res.layers()[0]
        return res.run["preprocess"], res.topk(layer)


def test_override_is_mined_and_stored(tiny, images, tmp_path):
    mine(tiny, images, tmp_path / "default", top_k=3, batch_size=8, progress="none")
    model = Model.load(tiny)
    before = dict(model.preprocess)
    mine(model, images, tmp_path / "plain", top_k=3, batch_size=8, progress="none", preprocess=PLAIN)
    assert model.preprocess == before                      # the caller's Model is not changed
    pre_default, top_default = _run(tmp_path / "default")
    pre_plain, top_plain = _run(tmp_path / "plain")
    assert pre_plain["mean"] == [0.0, 0.0, 0.0] and pre_plain["std"] == [1.0, 1.0, 1.0]
    assert pre_default["mean"] != pre_plain["mean"]
    assert not np.array_equal(top_default.values, top_plain.values)
    # The same override through Model.load gives the same results, bit for bit.
    mine(tiny, images, tmp_path / "loaded", top_k=3, batch_size=8, progress="none", preprocess=json.dumps(PLAIN))
    pre_loaded, top_loaded = _run(tmp_path / "loaded")
    assert pre_loaded == pre_plain
    assert np.array_equal(top_loaded.values, top_plain.values)
    assert np.array_equal(top_loaded.image_ids, top_plain.image_ids)


def test_cli_takes_json_or_a_file_and_refuses_bad_values(tiny, images, tmp_path):
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps(PLAIN))
    exe = [sys.executable, "-m", "cnnviz_fast", "mine", str(tiny), str(images), "--top-k", "3", "--batch-size", "8",
           "-q"]
    p = subprocess.run(exe + ["--out", str(tmp_path / "file"), "--preprocess", str(spec)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert _run(tmp_path / "file")[0]["std"] == [1.0, 1.0, 1.0]
    p = subprocess.run(exe + ["--out", str(tmp_path / "bad"), "--preprocess", '{"std": [0, 1, 1]}'],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "std" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(exe + ["--out", str(tmp_path / "bad2"), "--preprocess", "nosuchfile.json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--preprocess" in p.stderr
