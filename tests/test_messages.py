"""Messages name what the caller typed: CLI flags in the CLI, Python parameter names in the API;
`report` before `project` says so; `Projector` takes what `Model.load` takes; `run --limit`."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from cnnviz_fast.errors import CnnvizError, MiningError
from cnnviz_fast.mining import mine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("msg")
    generate(root, 12, seed=7)
    return root


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_top_k_is_a_flag_in_the_cli_and_a_parameter_in_the_api(data, tmp_path):
    p = cli("mine", "demo", data, "--out", tmp_path / "a", "--top-k", "0")
    assert p.returncode == 2 and "--top-k must be >= 1, got 0" in p.stderr and "top_k" not in p.stderr
    with pytest.raises(MiningError, match=r"^top_k must be >= 1, got 0$"):
        mine("demo", data, tmp_path / "b", top_k=0, progress="none")
    p = cli("mine", "demo", data, "--out", tmp_path / "c", "--limit", "0")
    assert p.returncode == 2 and "--limit must be >= 1" in p.stderr


def test_zoo_model_without_weights(data, tmp_path):
    p = cli("mine", "zoo:zfnet", data, "--out", tmp_path / "a")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--weights FILE" in p.stderr and "--random-weights" in p.stderr
    assert "random_weights" not in p.stderr and "weights=" not in p.stderr
    with pytest.raises(MiningError) as info:
        mine("zoo:zfnet", data, tmp_path / "b", progress="none")
    assert "weights=FILE" in str(info.value) and "random_weights=True" in str(info.value)
    assert "--" not in str(info.value)


def test_max_error_rate_in_the_api(data, tmp_path):
    with pytest.raises(MiningError, match="max_error_rate must be between 0 and 1"):
        mine("demo", data, tmp_path, max_error_rate=2.0, progress="none")
    p = cli("mine", "demo", data, "--out", tmp_path / "c", "--max-error-rate", "2")
    assert p.returncode == 2 and "--max-error-rate must be between 0 and 1" in p.stderr


def test_flag_mapping_touches_only_the_named_parameters():
    from cnnviz_fast.cli import cli_message

    exc = CnnvizError("top_k must be >= 1; a top_kx and my_top_k stay; weights=FILE or random_weights=True",
                      params=("top_k", "weights=FILE", "random_weights=True"))
    assert cli_message(exc) == "--top-k must be >= 1; a top_kx and my_top_k stay; --weights FILE or --random-weights"
    assert cli_message(CnnvizError("top_k is not a parameter here")) == "top_k is not a parameter here"
    exc = CnnvizError("device='cuda' cannot be used: no GPU", params=("device='cuda'",))
    assert cli_message(exc) == "--device cuda cannot be used: no GPU"


def test_report_before_project_says_so(data, tmp_path):
    out = tmp_path / "out"
    mine("demo", data, out, layers="conv1,conv2", top_k=3, progress="none")
    p = cli("report", out)
    assert p.returncode == 0 and "report: file://" in p.stdout
    assert "not projected yet: conv1, conv2" in p.stderr and f"cnnviz-fast project {out}" in p.stderr
    assert (out / "report" / "index.html").is_file()
    assert cli("project", out, "--quiet").returncode == 0
    p = cli("report", out)
    assert p.returncode == 0 and "not projected" not in p.stderr


def test_run_limit_mines_the_sample(data, tmp_path):
    p = cli("run", "demo", data, "--out", tmp_path / "out", "--layers", "conv1", "--limit", "5", "--top-k", "2",
            "--quiet")
    assert p.returncode == 0, p.stderr
    con = sqlite3.connect(tmp_path / "out" / "results.db")
    try:
        assert {r[0] for r in con.execute("SELECT images FROM unit_stats")} == {5}
        ids = {r[0] for r in con.execute("SELECT image_id FROM topk")}
        assert ids <= {0, 2, 4, 7, 9}                         # floor(j * 12 / 5)
        assert dict(con.execute("SELECT key, value FROM run"))["limit"] == "5"
    finally:
        con.close()
    assert (tmp_path / "out" / "report" / "units" / "conv1" / "unit_0000.html").is_file()


def test_projector_takes_what_model_load_takes():
    from cnnviz_fast import Model, Projector

    model = Model.load("demo")
    x = np.random.default_rng(0).random((1, *model.input_size), dtype=np.float32)
    want = Projector(model, device="cpu").project(x, layer="conv2", seeds=[(0, 3, 5, 6)])
    for spec in ("demo", model.path, str(model.path)):
        p = Projector(spec, device="cpu")
        assert p.model.sha256 == model.sha256
        np.testing.assert_array_equal(p.project(x, layer="conv2", seeds=[(0, 3, 5, 6)]), want)
    with pytest.raises(ValueError, match="no such file"):
        Projector("no-such-model.onnx")
