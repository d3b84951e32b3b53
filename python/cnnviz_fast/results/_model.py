"""The mined model: the one place that finds the model a results.db was mined with and checks that
it is that model (sha256 of the file's bytes), for the projection pass, the report and user programs."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import MinedModelError
from ._reader import Results


def load_mined_model(res: Results, model=None):
    """The `cnnviz_fast.Model` that `res` was mined with, loaded and checked.

    model: None (the file recorded in the run table, key model_path), a path or zoo name, or a
    loaded `Model`. Raises MinedModelError when no file is recorded, the file is gone or does not
    load, or the model's sha256 differs from the run's model_sha256 (a changed model would give
    projections that do not belong to the top-k rows).
    """
    from ..graph import Model, UnsupportedOp

    if model is None:
        path = res.run.get("model_path")
        if not path:
            raise MinedModelError("results.db does not record the model's file (it was mined from a model in "
                                  "memory)", "pass the mined model with --model FILE")
        if not Path(path).is_file():
            raise MinedModelError(f"the mined model {path} is gone", "pass its file with --model FILE")
        model = path
    if not isinstance(model, Model):
        try:
            model = Model.load(model)
        except (ValueError, OSError, ImportError, UnsupportedOp) as exc:  # InvalidModel is a ValueError
            raise MinedModelError(f"cannot load model {os.fspath(model)!r}: {exc}",
                                  "pass the mined model's file with --model FILE") from None
    want = res.run.get("model_sha256")
    if want and model.sha256 != want:
        raise MinedModelError(f"the model changed since mining: {model.path or model.name} has sha256 "
                              f"{model.sha256[:12]}…, results.db was mined with {str(want)[:12]}…",
                              "mine again, or pass the original model with --model FILE")
    return model
