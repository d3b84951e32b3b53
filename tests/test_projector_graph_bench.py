"""benchmarks/projection_graph.py runs end to end (a tiny workload) and writes its JSON rows."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_projection_graph_benchmark_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "projection_graph.py"
    spec = importlib.util.spec_from_file_location("bench_projection_graph", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--images", "2", "--top", "1", "--units", "2", "--batch", "2", "--threads", "1",
                       "--warmup", "0", "--full", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layer2.1" in text and "layer3.1" in text and "both" in text and "extrapolated" in text
    entry = json.loads(out.read_text())["benchmarks"][0]  # benchmarks/_common.py's format
    rows = entry["raw"]["rows"]
    assert [r["layer"] for r in rows] == ["layer2.1", "layer3.1"]
    assert all(r["windowed"] for r in rows)  # the windowed graph plan is what is timed
    assert [(r["timed"], r["projections"], r["extrapolated"]) for r in rows] == [(2, 128, True), (2, 256, True)]
    # Agreement with the baseline is held by the correctness tests; here it must only be measured.
    assert all(0 <= r["median_rel_err"] <= r["max_rel_err"] < float("inf") for r in rows)
    assert all(r["baseline_s"] > 0 and r["reverse_s"] > 0 and r["full_reverse_s"] > 0 and r["forward_s"] > 0
               for r in rows)
    assert entry["raw"]["forward_held_bytes"] > 0
    results = entry["results"]  # per layer, then both layers together (the target)
    assert len(results) == 3 and results[-1]["target"] == 3.0
    assert all(r["unit"] == "projections/s" and r["ours"] > 0 and r["baseline"] > 0 for r in results)
    assert all(r["extra"]["full_frame_per_s"] > 0 for r in results)
