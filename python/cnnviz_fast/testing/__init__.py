"""Tools to check projections against independent implementations (torch needed only when used).

`cnnviz_fast.testing.oracle`: the torch deconvnet oracle (see its docstring for the API);
`cnnviz_fast.testing.checks`: seed picking and the per-seed relative comparison the tests use.
"""
from .checks import assert_close, pick_seeds
from .oracle import MODES, Oracle, onnx_oracle, zoo_oracle

__all__ = ["MODES", "Oracle", "assert_close", "onnx_oracle", "pick_seeds", "zoo_oracle"]
