"""Test-only builders and runners shared by the test modules (importable as `_support` because
pytest puts tests/ on sys.path for tests/conftest.py; nothing here is collected as a test).

- `_support.onnx_models`: ONNX Runtime runs, torch exports, models written with onnx.helper;
- `_support.skeleton`: `Skeleton`, the receptive-field oracle (support of a linearised gradient);
- `_support.plans`: `run_plan` / `apply_plan`, a tiny projector over a ReversePlan's segments.

The deconvnet oracle itself is in the package: `cnnviz_fast.testing`.
"""
