"""Errors raised by the graph compiler."""
from __future__ import annotations

from typing import Iterable


class InvalidModel(ValueError):
    """The file is not an ONNX model the graph compiler can use (the message says why)."""


class UnsupportedOp(Exception):
    """An op on the path of a layer that the reverse plan (or receptive field) cannot handle.

    Attributes: `node` (node name), `op_type`, `layers` (names of the layers it blocks),
    `purpose` ("reverse plan" or "receptive field") and `reason` (extra detail, may be "").
    Mining is never refused: only the deconvnet path and receptive fields through the node are.
    """

    def __init__(self, node: str, op_type: str, layers: Iterable[str] = (),
                 purpose: str = "reverse plan", reason: str = ""):
        self.node = node
        self.op_type = op_type
        self.layers = list(layers)
        self.purpose = purpose
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        what = ("the deconvnet reverse plan" if self.purpose == "reverse plan"
                else "receptive-field computation")
        msg = f'node "{self.node}" ({self.op_type}) is not supported by {what}'
        if self.reason:
            msg += f" ({self.reason})"
        if self.layers:
            msg += f"; it blocks layer{'s' if len(self.layers) > 1 else ''} {', '.join(self.layers)}"
        return msg + " (mining still works for every layer)"

    def for_layers(self, layers: Iterable[str]) -> "UnsupportedOp":
        """The same error naming `layers` as the blocked ones."""
        return UnsupportedOp(self.node, self.op_type, layers, self.purpose, self.reason)
