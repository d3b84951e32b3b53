"""The GPU check: everything a machine with an NVIDIA GPU should run, in one call, one JSON summary.

    make gpu-check                          # builds first (see README, "GPU check")
    python benchmarks/gpu_check.py [--json gpu-check.json] [--budget 360]

In order, each step in its own process with its own time limit, so that one failure or hang does
not hide the others:

1. what is here: the GPU (driver, nvidia-smi), the native build (`_C.build_info()`), torch, CuPy,
   nvcc, and ONNX Runtime: its providers and whether the CUDA EP really loads (a session is opened);
2. `dlpack`: the native CUDA kernels and the CUDA top-k store on GPU arrays from torch or CuPy
   (DLPack), each result equal to the CPU twin's;
3. `cuda_tests`: `pytest -m cuda`;
4. `kernels`, `mining`, `projection`: the benchmarks with their CUDA options. Mining and projection
   run ours on ONNX Runtime's CUDA EP; where this ONNX Runtime has none they are recorded as not
   run, with the reason, and steps 2-3 still exercise the native CUDA code.

Without a GPU it says so, writes the summary and exits 0. Exit status 1 when a step that ran failed.
The defaults fit the issue's budget of 8 minutes, build included, on an H100/H200.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "cnnviz_fast.gpu_check/1"

# (name, argv after the interpreter, time limit in s, needs ORT's CUDA EP, needs torch with CUDA).
# The sizes keep each benchmark to about a minute on a Hopper machine's 16 cores.
STEPS = [
    ("cuda_tests", ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "{junit}"], 150, False, False),
    ("kernels", ["benchmarks/kernels.py", "--cuda", "--repeats", "3", "--json", "{json}"], 120, False, True),
    ("mining", ["benchmarks/mining.py", "--device", "cuda", "--images", "256", "--repeats", "2",
                "--json", "{json}"], 120, True, True),
    ("projection", ["benchmarks/projection.py", "--device", "cuda", "--units", "16", "--json", "{json}"],
     120, True, True),
]


def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        return None, out.decode(errors="replace") if isinstance(out, bytes) else out
    except OSError as exc:
        return -1, str(exc)


def _nvcc() -> str | None:
    """nvcc's version line ("Cuda compilation tools, release 13.0, V13.0.88"), or None."""
    if shutil.which("nvcc") is None:
        return None
    rc, out = _run(["nvcc", "--version"], 30)
    lines = [ln for ln in out.splitlines() if "release" in ln] if rc == 0 else []
    return lines[0].strip() if lines else None


def _cores() -> int | None:
    """runtime.cores(), or None where the package does not import (the build failed: say so later)."""
    try:
        from cnnviz_fast import runtime
    except ImportError:
        return None
    return runtime.cores()


def describe() -> dict:
    """The machine, the GPU, the native build, torch/CuPy and ONNX Runtime, as found here."""
    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cores": _cores()}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
               30) if shutil.which("nvidia-smi") else (None, "")
    info["nvidia_smi"] = [line.strip() for line in smi[1].splitlines() if line.strip()] if smi[0] == 0 else []
    info["nvcc"] = _nvcc()
    try:
        from cnnviz_fast import __version__, runtime

        info["cnnviz_fast"] = __version__
        n, why = runtime.gpu_count()
        info["gpu"] = {"count": n, "why": why}
        info["build"] = runtime.build_info()
        from cnnviz_fast import _C

        info["build"]["cuda_device_count"] = _C.cuda_device_count()
    except Exception as exc:  # the check reports a broken install instead of dying on it
        info["gpu"] = info.get("gpu", {"count": 0, "why": "cnnviz_fast does not import"})
        info["import_error"] = f"{type(exc).__name__}: {exc}"
        return info
    try:
        import onnxruntime as ort

        ok, why = runtime.ort_cuda_status()
        info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers(),
                               "cuda_ep": ok, "cuda_ep_why": why}
    except Exception as exc:
        info["onnxruntime"] = {"cuda_ep": False, "cuda_ep_why": f"{type(exc).__name__}: {exc}"}
    info["torch"] = _torch_info()
    info["cupy"] = _cupy_info()
    return info


def _torch_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "device": torch.cuda.get_device_name() if cuda else None}


def _cupy_info() -> dict | None:
    try:
        import cupy

        return {"version": cupy.__version__, "devices": cupy.cuda.runtime.getDeviceCount()}
    except Exception:  # CuPy raises its own errors without a driver or runtime library
        return None


def dlpack_check(library: str) -> dict:
    """Each native CUDA kernel and a CUDA TopKStore fed GPU arrays from `library` through DLPack,
    compared with the CPU twins on the same data (the rules are the same, so equal bit for bit)."""
    import numpy as np

    from cnnviz_fast import _C

    if library == "torch":
        import torch

        put, read = (lambda a: torch.from_numpy(a).cuda()), (lambda a: a.cpu().numpy())
    else:
        import cupy

        put, read = cupy.asarray, cupy.asnumpy
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((8, 16, 27, 27)), 0).astype(np.float32)
    checks: dict[str, bool] = {}
    y_c, s_c = _C.switch_pool(x, 3, 2)
    y_g, s_g = _C.switch_pool(put(x), 3, 2)
    checks["switch_pool"] = bool(np.array_equal(y_c, y_g.numpy()) and np.array_equal(s_c, s_g.numpy()))
    u_c = _C.unpool(y_c, s_c, 3, 2, output_size=x.shape[2:])
    u_g = _C.unpool(put(y_c), put(s_c), 3, 2, output_size=x.shape[2:])
    checks["unpool"] = bool(np.array_equal(u_c, u_g.numpy()))
    m_c, m_g = _C.unit_max(x), _C.unit_max(put(x))
    checks["unit_max"] = all(np.array_equal(a, b.numpy()) for a, b in zip(m_c, m_g))
    units, k = 16, 9
    cpu, gpu = _C.TopKStore(units, k, device="cpu"), _C.TopKStore(units, k, device="cuda")
    state = [np.full((units, k), -np.inf, np.float32), np.full((units, k), -1, np.int64),
             np.full((units, k), -1, np.int32)]
    state_g = [put(a) for a in state]
    for start in range(0, 96, 32):
        vals = rng.integers(0, 4, (32, units)).astype(np.float32)  # few levels: ties everywhere
        pos = rng.integers(0, 100, (32, units)).astype(np.int32)
        ids = np.arange(start, start + 32, dtype=np.int64)
        cpu.merge(vals, pos, ids)
        gpu.merge(put(vals), put(pos), put(ids))
        _C.topk_merge(*state, vals, pos, ids)
        _C.topk_merge(*state_g, put(vals), put(pos), put(ids))
    checks["TopKStore"] = all(np.array_equal(getattr(cpu, f)(), getattr(gpu, f)())
                              for f in ("values", "image_ids", "positions"))
    checks["topk_merge"] = all(np.array_equal(a, read(b)) for a, b in zip(state, state_g))
    return {"library": library, "equal_to_cpu": checks}


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total = int(suite.get("tests", 0))
    failed, errors, skipped = (int(suite.get(a, 0)) for a in ("failures", "errors", "skipped"))
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped}


def run_step(name: str, argv: list[str], limit: float, work: Path) -> dict:
    out_json, junit = work / f"{name}.json", work / f"{name}.xml"
    argv = [a.replace("{json}", str(out_json)).replace("{junit}", f"--junitxml={junit}") for a in argv]
    print(f"[gpu-check] {name}: {' '.join(argv)} (limit {limit:.0f} s)", flush=True)
    t = time.perf_counter()
    rc, out = _run([sys.executable, *argv], limit)
    step: dict = {"cmd": " ".join(["python", *argv]), "rc": rc, "wall_s": round(time.perf_counter() - t, 1),
                  "status": "timed out" if rc is None else "passed" if rc == 0 else "failed",
                  "tail": "\n".join(out.strip().splitlines()[-15:])}
    if out_json.is_file():
        step["results"] = json.loads(out_json.read_text())
    if junit.is_file():
        step["tests"] = _junit_counts(junit)
        if step["status"] == "passed" and step["tests"]["passed"] == 0:  # all skipped: say so
            step.update(status="failed", why="no CUDA test ran (see the skip reasons in the tail)")
    elif rc == 5 and "pytest" in argv:  # nothing collected
        step["status"] = "failed"
    print(f"[gpu-check] {name}: {step['status']} in {step['wall_s']} s", flush=True)
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("gpu-check.json"), help="the summary (default gpu-check.json)")
    ap.add_argument("--budget", type=float, default=360, help="seconds for all steps together (default 360)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    summary: dict = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": describe(), "steps": {}, "not_run": {}}
    m = summary["machine"]
    print(json.dumps({k: m.get(k) for k in ("nvidia_smi", "gpu", "build", "onnxruntime", "torch", "cupy", "nvcc")},
                     indent=1), flush=True)
    blocker = None
    if "import_error" in m:
        blocker = f"cnnviz_fast does not import: {m['import_error']}"
        summary["steps"]["import"] = {"status": "failed", "why": blocker}
    elif m["gpu"]["count"] == 0:
        blocker = f"no NVIDIA GPU here ({m['gpu']['why']})"
    elif not m["build"].get("cuda"):
        blocker = "cnnviz_fast._C was built without CUDA: rebuild with CNNVIZ_CUDA=ON (needs nvcc)"
        summary["steps"]["build"] = {"status": "failed", "why": blocker}
    if blocker is not None:
        print(f"[gpu-check] {blocker}: nothing was run on a GPU", flush=True)
        for name, *_ in [("dlpack",), *STEPS]:
            summary["not_run"][name] = blocker
    else:
        _run_all(summary, args.budget - (time.perf_counter() - t0))
    failed = [n for n, s in summary["steps"].items() if s["status"] != "passed"]
    summary.update(ok=not failed, failed=failed, gpu=blocker is None, wall_s=round(time.perf_counter() - t0, 1))
    args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    for name, why in summary["not_run"].items():
        print(f"[gpu-check] not run: {name}: {why}")
    print(f"[gpu-check] {'OK' if not failed else 'FAILED: ' + ', '.join(failed)}; summary in {args.json}")
    return 1 if failed else 0


def _run_all(summary: dict, budget: float) -> None:
    m = summary["machine"]
    torch_cuda = bool(m["torch"] and m["torch"]["cuda_available"])
    library = "torch" if torch_cuda else "cupy" if (m["cupy"] or {}).get("devices") else None
    if library is None:
        summary["not_run"]["dlpack"] = "neither torch with CUDA nor CuPy can put arrays on the GPU"
    else:
        try:
            res = dlpack_check(library)
            ok = all(res["equal_to_cpu"].values())
            summary["steps"]["dlpack"] = {"status": "passed" if ok else "failed", **res}
        except Exception as exc:
            summary["steps"]["dlpack"] = {"status": "failed", "why": f"{type(exc).__name__}: {exc}"}
        print(f"[gpu-check] dlpack ({library}): {summary['steps']['dlpack']}", flush=True)
    ort_cuda, ort_why = m["onnxruntime"]["cuda_ep"], m["onnxruntime"]["cuda_ep_why"]
    end = time.perf_counter() + budget
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name, argv, limit, needs_ort, needs_torch in STEPS:
            left = end - time.perf_counter()
            if needs_ort and not ort_cuda:
                summary["not_run"][name] = f"ONNX Runtime's CUDA EP is not usable here: {ort_why}"
            elif needs_torch and not torch_cuda:
                summary["not_run"][name] = "needs torch with CUDA (the benchmark's baseline and GPU arrays)"
            elif left < 30:
                summary["not_run"][name] = f"out of time ({budget:.0f} s budget spent)"
            else:
                summary["steps"][name] = run_step(name, argv, min(limit, left), Path(work))


if __name__ == "__main__":
    sys.exit(main())
