# Two commands do all the set-up on a fresh clone: `make demo` (no torch) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# AUTO builds the CUDA kernels when nvcc is found; CI sets ON so a CUDA compile error fails it.
CNNVIZ_CUDA ?= AUTO
export CNNVIZ_CUDA
# The test extras, pinned to what this machine installs (torch 2.14.1's CPU build from local disk
# and the torchvision built against it); pyproject.toml keeps them general.
TEST_PINS ?= torch==2.14.1 torchvision==0.29.1
# The build requirements live in the venv: installs run without build isolation, so the CMake tree
# in build/ is reused and a rebuild after a C++ change compiles only what changed.
BUILD_REQS := "scikit-build-core>=0.11" "pybind11>=2.12" "apache-tvm-ffi>=0.1" "cmake>=3.24" ninja
PIP_BUILD := $(BIN)/pip install -q --no-build-isolation
SAY_BUILD = @echo "Compiling the native extension cnnviz_fast._C (C++; CUDA too when nvcc is found, CNNVIZ_CUDA=$(CNNVIZ_CUDA)): about 3-5 min on 2 cores the first time (2 without CUDA), seconds when little changed."

.PHONY: test demo install test-deps info bench gpu-check gpu-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.build-deps: $(BIN)/python
	$(BIN)/pip install -q $(BUILD_REQS)
	touch $@

# Editable install with the runtime dependencies only (what the demo needs: no torch).
install: $(VENV)/.build-deps
	$(SAY_BUILD)
	$(PIP_BUILD) -e .

# The same install plus the test extras (and Ray: the cluster tests run a real local cluster).
test-deps: $(VENV)/.build-deps
	$(SAY_BUILD)
	$(PIP_BUILD) -e ".[test,ray]" $(TEST_PINS)

test: test-deps
	$(BIN)/python -m pytest -q

# The main job on the embedded default: generated images, shipped demo model, report in cnnviz-demo/.
demo: install
	$(BIN)/cnnviz-fast demo --out cnnviz-demo

info: install
	$(BIN)/cnnviz-fast info

bench: test-deps
	$(BIN)/cnnviz-fast bench kernels

# The GPU check (README, "GPU check"): build with CUDA, then benchmarks/gpu_check.py, summary in
# gpu-check.json. Where a GPU is visible the build requires CUDA and targets that GPU only (faster).
# GPU_PYTHON=python3 uses that interpreter instead of .venv, offline: it must already hold torch or
# CuPy, pytest, numpy, pillow, onnx, onnxruntime and tqdm; the build requirements it lacks come from
# GPU_WHEELS (`make gpu-wheels` fills it where PyPI is reachable).
GPU_PYTHON ?=
GPU_WHEELS ?= .gpu-wheels
GPU_ARCH := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
ifneq ($(GPU_ARCH),)
gpu-check: export CNNVIZ_CUDA = ON
gpu-check: export CNNVIZ_CUDA_ARCHS ?= $(GPU_ARCH)
endif
ifeq ($(GPU_PYTHON),)
gpu-check: test-deps
	$(BIN)/python benchmarks/gpu_check.py --json gpu-check.json
else
gpu-check:
	if [ -d $(GPU_WHEELS) ]; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps $(GPU_WHEELS)/*.whl; fi
	$(SAY_BUILD)
	$(GPU_PYTHON) -m pip install -q --no-index --no-build-isolation --no-deps .
	$(GPU_PYTHON) benchmarks/gpu_check.py --json gpu-check.json
endif

# The build requirements a GPU machine's image may lack, for Python 3.12 on x86-64 Linux (the
# lent H200's image), to carry there: scikit-build-core and apache-tvm-ffi.
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) \
	  "scikit-build-core>=0.11" "apache-tvm-ffi>=0.1"

clean:
	rm -rf build $(VENV) cnnviz-demo gpu-check.json python/cnnviz_fast/_C.*  # _C.*: left by the old setuptools build
