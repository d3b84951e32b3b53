"""benchmarks/projection.py runs end to end (a tiny workload) and prints its table and verdict."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_projection_benchmark_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "projection.py"
    spec = importlib.util.spec_from_file_location("bench_projection", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--images", "2", "--top", "1", "--units", "2", "--batch", "2", "--threads", "1",
                       "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all five" in text and "conv1-2" in text and "extrapolated" in text and "uint8" in text
    rows = json.loads(out.read_text())["benchmarks"][0]["raw"]["rows"]  # benchmarks/_common.py's format
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    # Agreement with the baseline is held by the correctness tests; here it must only be measured.
    assert all(0 <= r["median_rel_err"] <= r["max_rel_err"] < float("inf") for r in rows)
    assert all(r["baseline_s"] > 0 and r["windowed_s"] > 0 and r["full_s"] > 0 for r in rows)
