"""Compatibility names until mining/driver.py and tests/test_mine_cli.py import from runtime (the one
rule for devices lives in `cnnviz_fast.runtime`); delete this module then."""
from __future__ import annotations

from .. import runtime
from ..runtime import cuda_blocker  # noqa: F401


def resolve_device(requested: str) -> tuple[str, str]:
    """("cpu" | "cuda", the sentence saying what was chosen and why), as the miner used it."""
    target = runtime.resolve_device(requested, option="--device")
    return target.name, target.reason
