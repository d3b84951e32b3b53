# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# AUTO builds the CUDA kernels when nvcc is found; CI sets ON so a CUDA compile error fails it.
CNNVIZ_CUDA ?= AUTO
export CNNVIZ_CUDA
export CNNVIZ_BUILD_DIR ?= $(CURDIR)/build/cmake

.PHONY: test demo install deps info bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Python dependencies: torch 2.13.0 is the CPU build this machine keeps on disk (tests only).
$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "setuptools>=68" wheel "cmake>=3.24" ninja "pybind11>=2.12" "apache-tvm-ffi>=0.1"
	$(BIN)/pip install -q torch==2.13.0
	touch $@

deps: $(VENV)/.deps

# Editable install with its test extras; the CMake tree in build/ makes rebuilds incremental.
install: $(VENV)/.deps
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"

test: install
	$(BIN)/python -m pytest -q

# The main job on the embedded default: generated images, shipped demo model, report in cnnviz-demo/.
demo: install
	$(BIN)/cnnviz-fast demo --out cnnviz-demo

info: install
	$(BIN)/cnnviz-fast info

bench: install
	$(BIN)/cnnviz-fast bench kernels

clean:
	rm -rf build $(VENV) python/*.egg-info cnnviz-demo
