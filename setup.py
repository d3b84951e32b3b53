"""Build cnnviz_fast._C with CMake (configure + build), driven from setuptools.

Environment:
  CNNVIZ_CUDA=AUTO|ON|OFF     build the CUDA kernels (AUTO: when nvcc is found)
  CNNVIZ_CUDA_ARCHS="80;90"   CUDA architectures (CMake syntax); default in CMakeLists.txt
  CNNVIZ_BUILD_DIR=path       keep the CMake build tree there (incremental rebuilds)
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _dlpack_include() -> str:
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("apache-tvm-ffi (which ships dlpack/dlpack.h) is a build requirement: pip install apache-tvm-ffi")
    pkg = Path(list(spec.submodule_search_locations)[0])
    for cand in (pkg / "include", pkg / "3rdparty" / "dlpack" / "include"):
        if (cand / "dlpack" / "dlpack.h").exists():
            return str(cand)
    raise RuntimeError(f"dlpack/dlpack.h not found inside {pkg}")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = ext_path.parent
        build_dir = Path(os.environ.get("CNNVIZ_BUILD_DIR") or (Path(self.build_temp).resolve() / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("CNNVIZ_CUDA", "AUTO")
        version = self.distribution.get_version()
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CNNVIZ_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DDLPACK_INCLUDE_DIR={_dlpack_include()}",
            f"-DCNNVIZ_CUDA={cuda}",
            f"-DCNNVIZ_VERSION={version}",
        ]
        if os.environ.get("CNNVIZ_CUDA_ARCHS"):
            cfg.append(f"-DCNNVIZ_CUDA_ARCHS={os.environ['CNNVIZ_CUDA_ARCHS']}")
        subprocess.run(cfg, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


# models/ (the zoo and the shipped demo model) is installed as the subpackage cnnviz_fast.zoo, so the
# CLI and Model.load find it after a plain `pip install`. (The guard lets tests import _dlpack_include;
# setuptools runs this file as __main__.)
if __name__ == "__main__":
    setup(
        packages=find_packages("python") + ["cnnviz_fast.zoo"],
        package_dir={"": "python", "cnnviz_fast.zoo": "models"},
        package_data={"cnnviz_fast.zoo": ["*.onnx", "*.json", "*.md"]},
        ext_modules=[CMakeExtension("cnnviz_fast._C")],
        cmdclass={"build_ext": CMakeBuild},
    )
