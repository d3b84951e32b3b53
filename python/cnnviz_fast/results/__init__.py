"""results.db, the one store of a run (DESIGN.md, "Results on disk"): its schema (`_schema.py`), the
writer the miner checkpoints through (`open_results` -> `ResultsDB`, which holds the folder's
lock), the read-only view (`Results`) that the projection pass, the report and user programs read,
and `load_mined_model`, which finds the mined model and checks its sha256.

    from cnnviz_fast.results import Results, load_mined_model
    with Results("out/") as res:
        res.status, res.run["model_sha256"], res.layers(), res.topk("conv1").image_ids
        model = load_mined_model(res)      # MinedModelError when the model is gone or changed

Tables (SQLite, WAL; query them directly too):
  run(key, value)                                       configuration and provenance, values JSON
  images(image_id, path)                                the manifest
  topk(layer, unit, rank, value, image_id, y, x)        rank 0 strongest; y, x in the layer's map
  unit_stats(layer, unit, images, mean_max, firing_rate, max)   NULL before any image
  errors(image_id, path, error)                         images that could not be used, and why
  progress(key, value), unit_sums(layer, unit, sum_max, fired)  the miner's resume bookkeeping
  unit_hist(layer, unit, bin, count)                    per-image maxima over fixed bins (`_hist.py`)
"""
from ._model import load_mined_model
from ._reader import LayerInfo, Results, TopK
from ._schema import DB_NAME, REQUIRED_TABLES, SCHEMA
from ._snapshot import LayerSnapshot
from ._writer import CONFIG_KEYS, ResultsDB, open_results
from ..errors import MinedModelError, ResultsError

__all__ = ["Results", "ResultsError", "MinedModelError", "LayerInfo", "TopK", "load_mined_model",
           "LayerSnapshot", "ResultsDB", "open_results", "CONFIG_KEYS", "DB_NAME", "REQUIRED_TABLES", "SCHEMA"]
