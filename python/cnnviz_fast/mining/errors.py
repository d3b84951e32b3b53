"""The miner's errors (defined once, in `cnnviz_fast.errors`)."""
from ..errors import ConfigMismatch, DeviceUnavailable, ErrorRateExceeded, MiningError, RunLocked

__all__ = ["MiningError", "RunLocked", "ConfigMismatch", "DeviceUnavailable", "ErrorRateExceeded"]
