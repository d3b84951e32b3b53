"""The one JSON format every benchmark writes with `--json FILE` (README, "Benchmark results").

    {
      "format": "cnnviz-fast-bench/1",
      "created": "2026-12-02T01:00:00+00:00",           # UTC, when the file was written
      "machine": {"cpu": ..., "cores": 2, "load_average": 1.3, "platform": ..., "device": "cpu",
                  "gpu": null},                          # gpu: the GPU's name on a CUDA run
      "versions": {"cnnviz_fast": ..., "native": ..., "python": ..., "numpy": ..., "onnxruntime": ...,
                   "torch": ...},
      "benchmarks": [                                   # one entry per suite run (`bench all`: several)
        {"suite": "kernels", "command": "cnnviz-fast bench kernels --batch 8",
         "config": {...the suite's options...},
         "pass": true,                                  # every target met (null: the suite has none)
         "results": [
           {"name": "switch_pool zfnet conv1 [64, 96, 110, 110]",
            "unit": "ms",                               # of `ours` and `baseline`: ms, s, img/s, projections/s
            "better": "lower",                          # lower (times) or higher (rates)
            "ours": 546.0, "baseline": 2339.0, "baseline_name": "torch max_pool2d+indices",
            "ratio": 4.28,                              # how many times better ours is: > 1 ours wins
            "target": 1.0, "pass": true,                # the ratio asked for, and whether it was met
            "extra": {...}}                             # the row's other figures (agreement, GB/s, ...)
         ],
         "raw": {...}}                                  # the suite's own detailed numbers, as before
      ]
    }

A figure without a baseline (decode-only rates) has "baseline", "ratio", "target" and "pass" null.
`bench all --json FILE` writes one such file holding every suite it ran.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

FORMAT = "cnnviz-fast-bench/1"


def row(name: str, unit: str, ours: float, baseline: float | None = None, baseline_name: str | None = None,
        target: float | None = None, better: str | None = None, **extra) -> dict:
    """One result. `better` defaults from the unit (times lower, rates higher); ratio is oriented so
    that > 1 means ours is better."""
    better = better or ("lower" if unit in ("ms", "s") else "higher")
    ratio = None
    if baseline is not None and ours:
        ratio = baseline / ours if better == "lower" else ours / baseline
    return {"name": name, "unit": unit, "better": better, "ours": _num(ours), "baseline": _num(baseline),
            "baseline_name": baseline_name, "ratio": _num(ratio), "target": target,
            "pass": None if target is None or ratio is None else bool(ratio >= target), "extra": extra}


def entry(suite: str, config: dict, results: list[dict], raw, passed: bool | None = None,
          argv: list[str] | None = None) -> dict:
    """One suite's run. `passed` defaults to: every row with a target met (None when none has one)."""
    if passed is None:
        judged = [r["pass"] for r in results if r["pass"] is not None]
        passed = all(judged) if judged else None
    argv = sys.argv[1:] if argv is None else argv
    return {"suite": suite, "command": " ".join(["cnnviz-fast", "bench", suite, *map(shlex.quote, argv)]),
            "config": _plain(config), "pass": passed, "results": results, "raw": _plain(raw)}


def document(entries: list[dict], device: str = "cpu", gpu: str | None = None) -> dict:
    """The whole file: format, time, machine, versions and the suites' entries."""
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(device, gpu), "versions": versions(), "benchmarks": entries}


def write(path: str | os.PathLike, entries: list[dict], device: str = "cpu", gpu: str | None = None) -> Path:
    """Write the document atomically (a reader never sees half of it); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document(entries, device, gpu), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def machine(device: str = "cpu", gpu: str | None = None) -> dict:
    from cnnviz_fast.runtime import cores

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_name(), "cores": cores(), "load_average": None if load is None else round(load, 2),
            "platform": platform.platform(), "device": device, "gpu": gpu}


def versions() -> dict:
    import numpy
    import onnxruntime

    import cnnviz_fast
    from cnnviz_fast import _C

    out = {"cnnviz_fast": cnnviz_fast.__version__, "native": _C.build_info().get("version"),
           "python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__}
    torch = sys.modules.get("torch")  # only when the suite imported it (its baseline)
    if torch is not None:
        out["torch"] = torch.__version__
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _num(value):
    """A finite float (JSON has no NaN or infinity), else None."""
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _plain(value):
    """JSON-able copy: tuples and sets as lists, NumPy scalars as numbers, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "item"):  # NumPy scalar
        return _plain(value.item())
    if isinstance(value, float):
        return _num(value)
    return str(value)


class OracleBaseline:
    """The projection benchmarks' baseline: a batched autograd deconvnet on a zoo torch model, the
    package's oracle (cnnviz_fast.testing.oracle) in float32 on the benchmark's device."""

    def __init__(self, name: str, seed: int, device: str, batch: int):
        from cnnviz_fast.testing import zoo_oracle

        self.oracle = zoo_oracle(name, seed=seed, dtype="float32", device=device)
        self.device, self.batch = device, batch

    def project(self, x, seeds, layer: str):
        import numpy as np

        return self.oracle.project(x, seeds, layer, "deconvnet", batch=self.batch, out_dtype=np.float32)
