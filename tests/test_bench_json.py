"""`cnnviz-fast bench ... --json FILE` writes benchmarks/_common.py's one format, and `bench all`
runs the suites and gathers them into one such file (tiny sizes: the figures mean nothing here)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"name", "unit", "better", "ours", "baseline", "baseline_name", "ratio", "target", "pass", "extra"}


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_document(doc: dict, suites: list[str]) -> None:
    """What README's "Benchmark results" promises of every file."""
    assert doc["format"] == "cnnviz-fast-bench/1"
    assert {"cpu", "cores", "platform", "device", "gpu", "load_average"} <= set(doc["machine"])
    assert {"cnnviz_fast", "native", "python", "numpy", "onnxruntime"} <= set(doc["versions"])
    assert [e["suite"] for e in doc["benchmarks"]] == suites
    for e in doc["benchmarks"]:
        assert e["command"].startswith(f"cnnviz-fast bench {e['suite']}")
        assert e["results"], e
        for r in e["results"]:
            assert set(r) == ROW_KEYS
            assert r["better"] in ("lower", "higher") and r["ours"] > 0
            if r["baseline"] is not None:
                want = r["baseline"] / r["ours"] if r["better"] == "lower" else r["ours"] / r["baseline"]
                assert r["ratio"] == pytest.approx(want)
            if r["target"] is not None:
                assert r["pass"] == (r["ratio"] >= r["target"])
        judged = [r["pass"] for r in e["results"] if r["pass"] is not None]
        assert e["pass"] in (True, False, None)
        if e["suite"] == "kernels":
            assert e["pass"] == all(judged)


def test_row_ratio_is_oriented_so_that_above_one_means_ours_wins():
    common = _load("_common")
    t = common.row("x", "ms", 10.0, 40.0, "base", target=2.0)
    assert (t["better"], t["ratio"], t["pass"]) == ("lower", 4.0, True)
    r = common.row("y", "img/s", 10.0, 40.0, "base", target=1.0)
    assert (r["better"], r["ratio"], r["pass"]) == ("higher", 0.25, False)
    alone = common.row("decode", "img/s", 5.0)
    assert alone["baseline"] is None and alone["ratio"] is None and alone["pass"] is None
    assert common.row("z", "s", float("nan"))["ours"] is None      # JSON has no NaN


def test_kernels_json_through_the_cli(tmp_path):
    out = tmp_path / "k.json"
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "bench", "kernels", "--batch", "1", "--repeats", "1",
                        "--warmup", "0", "--ops", "switch_pool,topk_merge", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    check_document(doc, ["kernels"])
    names = [r["name"] for r in doc["benchmarks"][0]["results"]]
    assert any(n.startswith("switch_pool zfnet conv1") for n in names) and any("topk_merge" in n for n in names)
    assert doc["benchmarks"][0]["config"]["batch"] == 1


def test_bench_all_gathers_the_suites_into_one_file(tmp_path):
    out = tmp_path / "all.json"
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "bench", "all", "--smoke", "--only", "kernels",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "=== summary" in p.stdout and "kernels" in p.stdout
    doc = json.loads(out.read_text())
    check_document(doc, ["kernels"])
    assert doc["benchmarks"][0]["command"].startswith("cnnviz-fast bench kernels --batch 1")


def test_bench_all_standard_suites_and_a_suite_that_fails(tmp_path, monkeypatch, capsys):
    """The standard list is kernels, mining, projection; a suite that dies is recorded with its
    error, the others still run, and the exit status says so."""
    bench_all = _load("all")
    assert bench_all.parse_args([]).size == "default" and bench_all.STANDARD == ("kernels", "mining", "projection")
    assert bench_all.suite_args("mining", "quick", "cuda")[-2:] == ["--device", "cuda"]
    fake = tmp_path / "suites"
    fake.mkdir()
    (fake / "kernels.py").write_text("import sys\nsys.exit(2)\n")
    (fake / "mining.py").write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import _common\n"
        "_common.write(sys.argv[sys.argv.index('--json') + 1], "
        "[_common.entry('mining', {}, [_common.row('r', 'img/s', 2.0, 1.0, 'b', 1.5)], {})])\n")
    (fake / "projection.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.setattr(bench_all, "HERE", fake)
    out = tmp_path / "all.json"
    assert bench_all.main(["--smoke", "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    kernels, mining, projection = doc["benchmarks"]
    assert "exit status 2" in kernels["error"] and kernels["results"] == []
    assert mining["pass"] is True and mining["results"][0]["ratio"] == 2.0
    assert "no results written" in projection["error"]
    assert "targets met" in capsys.readouterr().out
