"""The ONNX loader under hostile files (issue 11): a few hundred mutations of a real model
(truncations, flipped bytes, random headers, random files, broken fields), each through
`Model.load` and through the `mine` command line. Never a traceback, never a hang past a bound,
and every file that does not load gives a clear error (InvalidModel / exit 2 naming the model).

The files run in one child process (a crash in native code would otherwise take pytest down; the
child's last line names the file it was on) with a per-file alarm as the hang bound."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from _support.mining import tiny  # noqa: F401

PER_FILE_S = 60        # the hang bound for one file (a load takes well under a second here)
CHILD = r"""
import contextlib, io, json, signal, sys
from pathlib import Path

from cnnviz_fast.cli import main
from cnnviz_fast.graph import Model, UnsupportedOp
from cnnviz_fast.errors import CnnvizError

files, data, out, bound = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])

class Hang(Exception):
    pass

def alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
for n, path in enumerate(json.loads(Path(files).read_text())):
    rec = {"file": path}
    print(json.dumps({"on": path}), flush=True)
    signal.alarm(bound)
    try:
        try:
            Model.load(path)
            rec["load"] = "ok"
        except (ValueError, UnsupportedOp, CnnvizError) as exc:   # InvalidModel is a ValueError
            rec["load"] = "refused"
            rec["why"] = str(exc)[:300]
        except Hang:
            rec["load"] = "HANG"
        except BaseException as exc:
            rec["load"] = f"UNEXPECTED {type(exc).__name__}: {str(exc)[:300]}"
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rec["exit"] = main(["mine", path, data, "--out", str(out / str(n)), "--batch-size", "4",
                                    "--workers", "1", "--threads", "1", "--quiet"])
        except Hang:
            rec["exit"] = "HANG"
        except BaseException as exc:
            rec["exit"] = f"TRACEBACK {type(exc).__name__}: {str(exc)[:300]}"
        rec["stderr"] = err.getvalue()[-400:]
    finally:
        signal.alarm(0)
    print(json.dumps(rec), flush=True)
"""


def mutations(raw: bytes, proto: onnx.ModelProto, rng: np.random.Generator):
    """(kind, bytes) of every mutated file; seeded, the same every run."""
    n = len(raw)
    for cut in rng.integers(0, n, 90):
        yield "truncated", raw[:int(cut)]
    for _ in range(90):
        b = bytearray(raw)
        for pos in rng.integers(0, n, int(rng.integers(1, 24))):
            b[int(pos)] ^= int(rng.integers(1, 256))
        yield "flipped", bytes(b)
    for _ in range(50):
        b = bytearray(raw)
        head = int(rng.integers(4, 256))
        b[:head] = rng.bytes(head)
        yield "random header", bytes(b)
    for _ in range(20):
        yield "random", rng.bytes(int(rng.integers(0, 4096)))
    yield "empty", b""
    for _ in range(30):
        yield "broken field", _broken_field(proto, rng).SerializeToString()


def _broken_field(proto: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    g = p.graph
    choice = int(rng.integers(0, 6))
    if choice == 0 and g.node:
        del g.node[int(rng.integers(0, len(g.node)))]
    elif choice == 1:
        p.opset_import[0].version = int(rng.choice([1, 5, 99]))
    elif choice == 2 and g.initializer:
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        t.dims[0] = int(rng.choice([0, 1 << 40, 3]))
    elif choice == 3:
        dim = g.input[0].type.tensor_type.shape.dim
        dim[int(rng.integers(1, len(dim)))].dim_value = int(rng.choice([0, 1, 1 << 30]))
    elif choice == 4 and g.node:
        node = g.node[int(rng.integers(0, len(g.node)))]
        node.op_type = str(rng.choice(["NoSuchOp", "Loop", "Conv"]))
    else:
        for prop in p.metadata_props:
            if prop.key == "cnnviz.preprocess":
                prop.value = str(rng.choice(["{", "[]", '{"crop": -1}', "null"]))
    return p


def test_hundreds_of_mutated_models_never_give_a_traceback_or_a_hang(tiny, tmp_path):  # noqa: F811
    from cnnviz_fast.datasets.synthetic import generate

    raw = tiny.read_bytes()
    proto = onnx.load_model_from_string(raw)
    files = []
    kinds = {}
    for i, (kind, blob) in enumerate(mutations(raw, proto, np.random.default_rng(11))):
        path = tmp_path / "models" / f"{i:04d}.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blob)
        files.append(str(path))
        kinds[str(path)] = kind
    assert len(files) >= 250
    data = tmp_path / "data"
    generate(data, 8, seed=2, size=36)
    (tmp_path / "files.json").write_text(json.dumps(files))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "files.json"), str(data), str(tmp_path / "out"),
                           str(PER_FILE_S)], capture_output=True, text=True, timeout=1500)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [r for r in records if "load" in r]
    assert proc.returncode == 0 and len(done) == len(files), (
        f"child exit {proc.returncode} on {records[-1] if records else None}: {proc.stderr[-2000:]}")
    bad = []
    for r in done:
        problems = []
        if r["load"] not in ("ok", "refused"):
            problems.append(f"load {r['load']}")
        if r["exit"] not in (0, 2, 3):
            problems.append(f"mine {r['exit']}")
        if "Traceback" in r["stderr"]:
            problems.append("traceback printed")
        if r["load"] == "refused" and not (r["exit"] == 2 and "cnnviz-fast mine:" in r["stderr"]
                                           and "model" in r["stderr"]):
            problems.append(f"a refused model must give exit 2 with a message, got {r['exit']}: {r['stderr']!r}")
        if r["load"] == "refused" and not r["why"].strip():
            problems.append("empty reason")
        if problems:
            bad.append((kinds[r["file"]], r["file"], problems))
    assert not bad, f"{len(bad)} of {len(done)} files misbehave, e.g. {bad[:5]}"
    refused = sum(r["load"] == "refused" for r in done)
    assert refused >= len(done) // 3, f"only {refused} of {len(done)} mutations were refused: the fuzzing is too mild"
