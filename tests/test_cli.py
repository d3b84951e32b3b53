"""The command line as a user meets it (`python -m cnnviz_fast`, `cnnviz-fast`): every command
listed, the one exception -> exit status table, no traceback for a user's problem, defaults equal
to the library's, and `run` giving exactly what mine + project + report give."""
from __future__ import annotations

import inspect
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnviz_fast import cli, errors
from cnnviz_fast.cli import BENCHMARKS
from cnnviz_fast.datasets.synthetic import generate
from cnnviz_fast.runtime import DEVICES

COMMANDS = ("mine", "project", "report", "run", "demo", "info", "bench", "zoo")


def cnnviz(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    generate(root, 12, seed=4)
    return root


def test_help_lists_every_command():
    p = cnnviz("--help")
    assert p.returncode == 0 and "python -m cnnviz_fast" in p.stdout
    for command in COMMANDS:
        assert f"\n    {command} " in p.stdout, command
    entry = Path(sys.executable).with_name("cnnviz-fast")  # the installed console script
    if not entry.exists():
        pytest.skip("no cnnviz-fast script next to this Python")
    q = subprocess.run([str(entry), "--help"], capture_output=True, text=True)
    assert q.returncode == 0 and q.stdout == p.stdout


def test_bench_lists_the_suites_in_benchmarks():
    suites = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
    assert {"kernels", "mining", "projection"} <= set(suites)
    p = cnnviz("bench", "--help")
    assert p.returncode == 0 and "{" + ",".join(suites) + "}" in p.stdout
    p = cnnviz("bench", "nosuch")
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_exit_table_covers_every_error_class(monkeypatch):
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.CnnvizError)]
    assert len(classes) >= 10
    for cls in classes:
        want = 3 if issubclass(cls, errors.ErrorRateExceeded) else 2
        assert cli.exit_code(cls.__new__(cls)) == want, cls
    assert cli.exit_code(KeyboardInterrupt()) == 130
    assert cli.exit_code(PermissionError(13, "Permission denied")) == 2
    assert cli.exit_code(RuntimeError("a bug")) is None

    def raises(exc):
        def run(args):
            raise exc
        return run

    argv = ["mine", "demo", "data", "--out", "o"]
    monkeypatch.setattr(cli, "_mine", raises(KeyboardInterrupt()))
    assert cli.main(argv) == 130
    monkeypatch.setattr(cli, "_mine", raises(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # not a user's problem: the traceback is the report
        cli.main(argv)


def test_user_errors_give_a_message_and_status_without_traceback(data, tmp_path):
    broken = tmp_path / "broken"
    generate(broken, 12, seed=4)
    for k in range(2):
        (broken / f"bad{k}.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "afile").write_text("")
    cases = [
        (("report", tmp_path / "nowhere"), 2, "cnnviz-fast mine"),                     # ResultsError
        (("project", tmp_path / "nowhere"), 2, "does not exist"),                      # ProjectionError
        (("mine", tmp_path / "no.onnx", data, "--out", tmp_path / "o"), 2, "cannot load model"),  # MiningError
        (("demo", "--images", "3", "--out", tmp_path / "d"), 2, "at least 10 images"),  # DemoError
        (("zoo", "export", "zfnet", "-o", tmp_path / "z.onnx", "--weights", tmp_path / "none.pth"), 2,
         "does not exist"),
        (("mine", "demo", data, "--out", tmp_path / "afile", "--quiet"), 2, "File exists"),  # OSError
        (("mine", "demo", broken, "--out", tmp_path / "e", "--layers", "conv1", "--quiet",
          "--max-error-rate", "0.01"), 3, "more than --max-error-rate 0.01"),          # ErrorRateExceeded
    ]
    for args, code, words in cases:
        p = cnnviz(*args)
        assert p.returncode == code, (args, p.stderr)
        assert f"cnnviz-fast {args[0]}" in p.stderr and words in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr


def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    generate(data, 600, seed=1, size=40)
    cmd = [sys.executable, "-m", "cnnviz_fast", "mine", "demo", str(data), "--out", str(out), "--layers", "conv1",
           "--batch-size", "4", "--checkpoint-every", "4", "--workers", "1", "--threads", "1", "--progress", "lines"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not _mined_some(out / "results.db"):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    if proc.returncode == 0:
        pytest.skip("the miner finished before the interrupt")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err and "run the same command again to resume" in err
    p = cnnviz(*cmd[3:-2], "--quiet")
    assert p.returncode == 0, p.stderr
    con = sqlite3.connect(out / "results.db")
    try:
        assert dict(con.execute("SELECT key, value FROM progress"))["status"] == "finished"
        assert set(con.execute("SELECT images FROM unit_stats")) == {(600,)}
    finally:
        con.close()


def _mined_some(db: Path) -> bool:
    if not db.exists():  # connecting would create an empty file in the miner's way
        return False
    try:
        con = sqlite3.connect(db)
        try:
            return int(dict(con.execute("SELECT key, value FROM progress")).get("images_done", 0)) > 0
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return False


def test_defaults_are_the_library_defaults():
    from cnnviz_fast.demo import demo
    from cnnviz_fast.mining import mine
    from cnnviz_fast.projection import project
    from cnnviz_fast.reporting import report

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    parser = cli.build_parser()
    args = vars(parser.parse_args(["mine", "M", "D", "--out", "O"]))
    want = defaults(mine)
    renamed = {"checkpoint_every": "checkpoint_images", "checkpoint_seconds": "checkpoint_seconds"}
    for opt in ("layers", "top_k", "batch_size", "workers", "threads", "device", "weights", "random_weights",
                "overwrite", "max_error_rate", "checkpoint_every", "checkpoint_seconds", "draft", "heads", "progress"):
        assert args[opt] == want[renamed.get(opt, opt)], opt
    args, want = vars(parser.parse_args(["project", "O"])), defaults(project)
    for opt in ("layers", "model", "device", "mode", "batch_size", "save_arrays", "force", "progress"):
        assert args[opt] == want[opt], opt
    run = vars(parser.parse_args(["run", "M", "D", "--out", "O"]))
    assert (run["mode"], run["save_arrays"]) == (want["mode"], want["save_arrays"])
    assert vars(parser.parse_args(["report", "O"]))["montage_units"] == defaults(report)["montage_units"]
    args, want = vars(parser.parse_args(["demo"])), defaults(demo)
    assert (args["out"], args["images"], args["device"]) == (want["out"], want["images"], want["device"])
    for command in (["mine", "M", "D", "--out", "O"], ["project", "O"], ["run", "M", "D", "--out", "O"], ["demo"]):
        assert [vars(parser.parse_args([*command, "--device", d]))["device"] for d in DEVICES] == list(DEVICES)
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--device", "tpu"])


def _tables(db: Path) -> dict:
    """Every table's rows, less what records when (run.created, progress elapsed_s/updated)."""
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(con.execute(f'SELECT * FROM "{t}"')) for t in names}
    finally:
        con.close()
    rows["run"] = [r for r in rows["run"] if r[0] != "created"]
    rows["progress"] = [r for r in rows["progress"] if r[0] not in ("elapsed_s", "updated")]
    return rows


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_equals_mine_project_report(data, tmp_path):
    import json

    opts = ("--layers", "conv1,conv2", "--top-k", "4", "--batch-size", "5", "--quiet")
    p = cnnviz("run", "demo", data, "--out", tmp_path / "run", *opts)
    assert p.returncode == 0, p.stderr
    for args in (("mine", "demo", data, "--out", tmp_path / "steps", *opts), ("project", tmp_path / "steps", "--quiet"),
                 ("report", tmp_path / "steps", "--quiet")):
        p = cnnviz(*args)
        assert p.returncode == 0, p.stderr
    a, b = tmp_path / "run", tmp_path / "steps"
    assert _tables(a / "results.db") == _tables(b / "results.db")
    fa, fb = _files(a / "projections"), _files(b / "projections")
    assert sorted(fa) == sorted(fb) and any(n.endswith("_recon.png") for n in fa)
    for name, path in fa.items():
        if name.endswith("layer.json"):  # the marker also records how long the layer took
            ja, jb = json.loads(path.read_text()), json.loads(fb[name].read_text())
            ja.pop("elapsed_s"), jb.pop("elapsed_s")
            assert ja == jb, name
        else:
            assert path.read_bytes() == fb[name].read_bytes(), name
    ra, rb = _files(a / "report"), _files(b / "report")
    assert sorted(ra) == sorted(rb) and "index.html" in ra
    created = {d: dict(sqlite3.connect(d / "results.db").execute("SELECT key, value FROM run"))["created"]
               for d in (a, b)}
    for name, path in ra.items():
        got, want = path.read_bytes(), rb[name].read_bytes()
        if name == "index.html":  # it shows when each run was created
            got = got.replace(json.loads(created[a]).encode(), json.loads(created[b]).encode())
        assert got == want, name
