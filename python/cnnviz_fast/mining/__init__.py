"""Pass 1, mining: for every unit of the chosen layers, the k dataset images that excite it most,
with per-unit statistics, in a resumable results.db.

    from cnnviz_fast import mine
    summary = mine("zoo:zfnet", "train/", "out/", weights="zfnet.pth", top_k=9)
    print(summary)                     # images, errors, img/s, where the results are

`mine()` (driver) only orchestrates: results.db (`cnnviz_fast.results`), resume, checkpoints,
the error budget, progress and the summary around the loop of `_loop` (`mine_batches`,
`mine_partial`: a range or list of image ids into a `MiningState`). Partial states merge exactly
(`MiningState.merge`, see `_state` for what "exactly" means for the sums). `errors` holds the
exceptions (each message is for the person running it).
"""
from .driver import mine
from .errors import ConfigMismatch, DeviceUnavailable, ErrorRateExceeded, MiningError, RunLocked
from ..results import CONFIG_KEYS, DB_NAME
from ._loop import Partial, mine_batches, mine_partial
from ._state import MiningState
from .summary import MiningSummary

__all__ = ["mine", "MiningSummary", "MiningError", "ConfigMismatch", "DeviceUnavailable", "ErrorRateExceeded",
           "RunLocked", "CONFIG_KEYS", "DB_NAME", "MiningState", "Partial", "mine_batches", "mine_partial"]
