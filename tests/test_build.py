"""The build (CUDA switch, wheel layout, reinstall), `info` and the GPU check, as a user meets them."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import cnnviz_fast
from cnnviz_fast import _C, cli

ROOT = Path(__file__).resolve().parents[1]


def _configure(tmp_path, cuda: str, env_extra: dict) -> subprocess.CompletedProcess:
    import pybind11

    # CMakeLists.txt finds the DLPack header inside apache-tvm-ffi through Python_EXECUTABLE.
    env = dict(os.environ, **env_extra)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DCNNVIZ_CUDA={cuda}",
           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_cuda_on_without_a_compiler_fails_with_install_advice(tmp_path):
    r = _configure(tmp_path, "ON", {"CUDACXX": str(tmp_path / "no-such-nvcc")})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "CNNVIZ_CUDA=ON but no CUDA compiler was found" in out
    assert "Install the CUDA toolkit" in out


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_cuda_off_configures_and_says_so(tmp_path):
    r = _configure(tmp_path, "OFF", {})
    assert r.returncode == 0, r.stderr
    assert "CUDA kernels OFF" in r.stdout
    assert "DLPack header" in r.stdout and "tvm_ffi" in r.stdout


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None, reason="needs cmake and nvcc")
def test_cuda_auto_with_nvcc_resolves_architectures(tmp_path):
    r = _configure(tmp_path, "AUTO", {"CNNVIZ_CUDA_ARCHS": "80;90"})
    assert r.returncode == 0, r.stderr
    assert "CUDA kernels ON (nvcc" in r.stdout
    assert "architectures 80,90" in r.stdout


def test_build_info_reports_the_build():
    info = _C.build_info()
    assert info["version"] == cnnviz_fast.__version__
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert any(a.startswith("80") for a in info["cuda_archs"]) or os.environ.get("CNNVIZ_CUDA_ARCHS")
    else:
        assert info["cuda_archs"] == []
    assert info["dlpack_version"].startswith("1.")


def test_info_command_prints_build_runtime_and_gpu(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "native build: CUDA kernels" in out
    assert "ONNX Runtime" in out and "providers" in out
    assert "GPU:" in out
    assert "ONNX Runtime CUDA EP usable:" in out


def test_set_num_threads_round_trips():
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        assert _C.get_num_threads() == 1
        with pytest.raises(ValueError, match="'n'"):
            _C.set_num_threads(0)
    finally:
        _C.set_num_threads(before)


def _wheel(out: Path) -> tuple[Path, str]:
    # Without build isolation, in the build tree the editable install uses: an incremental build.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
                        "--no-index", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("cnnviz_fast-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_wheel_builds_twice_with_the_package_layout_and_no_deprecation(tmp_path):
    pytest.importorskip("scikit_build_core")
    first, log = _wheel(tmp_path / "1")
    assert "deprecat" not in log.lower(), [ln for ln in log.splitlines() if "eprecat" in ln]
    second, _ = _wheel(tmp_path / "2")  # the same tree again: the reinstall case
    names = set(zipfile.ZipFile(second).namelist())
    assert any(n.startswith("cnnviz_fast/_C.") and n.endswith((".so", ".pyd")) for n in names), sorted(names)
    for f in ("cnnviz_fast/__init__.py", "cnnviz_fast/cli.py", "cnnviz_fast/zoo/__init__.py",
              "cnnviz_fast/zoo/zfnet.py", "cnnviz_fast/zoo/demo.onnx", "cnnviz_fast/zoo/demo.json"):
        assert f in names, f
    assert not any("__pycache__" in n or n.startswith(("models/", "python/", "setup.py")) for n in names)
    meta = zipfile.ZipFile(first).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


def test_gpu_check_without_a_gpu_says_so_exits_0_and_writes_json(tmp_path):
    # An empty CUDA_VISIBLE_DEVICES hides every GPU from the driver, so this holds on GPU machines too.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--json", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no NVIDIA GPU here" in r.stdout and "nothing was run on a GPU" in r.stdout
    summary = json.loads(out.read_text())
    assert summary["schema"] == "cnnviz_fast.gpu_check/1"
    assert summary["gpu"] is False and summary["ok"] is True and summary["steps"] == {}
    assert set(summary["not_run"]) == {"dlpack", "cuda_tests", "kernels", "mining", "projection"}
    assert all(why.startswith("no NVIDIA GPU here") for why in summary["not_run"].values())
    m = summary["machine"]
    assert m["build"]["version"] == cnnviz_fast.__version__
    assert "CPUExecutionProvider" in m["onnxruntime"]["providers"]


def test_gpu_check_steps_record_status_test_counts_benchmark_json_and_timeouts(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    tests = tmp_path / "t_two.py"
    tests.write_text("def test_a():\n    pass\n\n\ndef test_b():\n    assert False\n")
    step = gpu_check.run_step("t", ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), "{junit}"], 120, tmp_path)
    assert step["status"] == "failed" and step["rc"] == 1
    assert step["tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    bench = tmp_path / "bench.py"
    bench.write_text("import json, sys\njson.dump({'ratio': 2.5}, open(sys.argv[sys.argv.index('--json') + 1], 'w'))\n")
    step = gpu_check.run_step("b", [str(bench), "--json", "{json}"], 120, tmp_path)
    assert step["status"] == "passed" and step["results"] == {"ratio": 2.5}
    hang = tmp_path / "hang.py"
    hang.write_text("import time\ntime.sleep(60)\n")
    step = gpu_check.run_step("h", [str(hang)], 1, tmp_path)
    assert step["status"] == "timed out" and step["rc"] is None
