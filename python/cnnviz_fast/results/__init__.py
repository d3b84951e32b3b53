"""results.db, the one store of a run (DESIGN.md, "Results on disk"): its schema, the writer the
miner checkpoints through (`open_results` -> `ResultsDB`, which holds the folder's lock), and the
read-only view (`Results`) that the projection pass, the report and user programs read.

    from cnnviz_fast.results import Results
    with Results("out/") as res:
        res.status, res.layers(), res.topk(res.layers()[0])
"""
from ._reader import LayerInfo, Results, TopK
from ._schema import DB_NAME, SCHEMA
from ._snapshot import LayerSnapshot
from ._writer import CONFIG_KEYS, ResultsDB, open_results
from ..errors import ResultsError

__all__ = ["Results", "ResultsError", "LayerInfo", "TopK", "LayerSnapshot", "ResultsDB", "open_results",
           "CONFIG_KEYS", "DB_NAME", "SCHEMA"]
