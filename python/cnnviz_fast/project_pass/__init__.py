"""Pass 2, project: every top-k entry of a mined run projected back to pixels with the deconvnet.

    from cnnviz_fast.project_pass import project
    summary = project("out/")          # reads out/results.db, writes out/projections/<layer>/
    print(summary)                     # layers, projections, stale entries, where the output is

Only images in some top-k are decoded (once, with the miner's preprocessing) and forwarded; each
stored activation is recomputed and compared with results.db, so a file changed after mining is
reported instead of drawn. Layers are resumable: a finished layer leaves `layer.json`.
`results` is a read-only view of results.db that the report uses too.
"""
from ._layer import MARKER
from ._pass import PROJECTIONS, ProjectionError, ProjectionSummary, project
from .results import Results, ResultsError

__all__ = ["project", "ProjectionSummary", "ProjectionError", "Results", "ResultsError", "PROJECTIONS", "MARKER"]
