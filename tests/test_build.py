"""The build's CUDA switch and the `info` command, as a user on a fresh machine meets them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cnnviz_fast
from cnnviz_fast import _C, cli

ROOT = Path(__file__).resolve().parents[1]


def _configure(tmp_path, cuda: str, env_extra: dict) -> subprocess.CompletedProcess:
    import pybind11

    sys.path.insert(0, str(ROOT))
    try:
        from setup import _dlpack_include
    finally:
        sys.path.pop(0)
    env = dict(os.environ, **env_extra)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DCNNVIZ_CUDA={cuda}",
           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DDLPACK_INCLUDE_DIR={_dlpack_include()}",
           f"-DPython_EXECUTABLE={sys.executable}"]
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
