"""Pass 1, mining: for every unit of the chosen layers, the k dataset images that excite it most,
with per-unit statistics, in a resumable results.db.

    from cnnviz_fast import mine
    summary = mine("zoo:zfnet", "train/", "out/", weights="zfnet.pth", top_k=9)
    print(summary)                     # images, errors, img/s, where the results are

`store` documents results.db; `errors` the exceptions (each message is for the person running it).
"""
from .driver import mine
from .errors import ConfigMismatch, DeviceUnavailable, ErrorRateExceeded, MiningError, RunLocked
from ..results import CONFIG_KEYS, DB_NAME
from .summary import MiningSummary

__all__ = ["mine", "MiningSummary", "MiningError", "ConfigMismatch", "DeviceUnavailable", "ErrorRateExceeded",
           "RunLocked", "CONFIG_KEYS", "DB_NAME"]
