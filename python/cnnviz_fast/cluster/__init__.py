"""Past one machine: the mining and projection passes on a Ray cluster (DESIGN.md, "Past one machine").

    cnnviz_fast.mine("model.onnx", "train/", "out/", ray="local:8")    # or "auto", "ray://head:10001"

The manifest is cut into fixed shards (`_shards`), one worker per GPU or per few CPU cores mines
whole shards into partial states (`_actor`, `_pool`), and the driver records each finished shard in
results.db in one transaction and reduces them in shard order (`_mine`), so the results equal a
single-process run exactly; the projection pass is spread by layer (`_project`). Ray is an optional extra (`pip install "cnnviz_fast[ray]"`): this
package imports it only when a run asks for a cluster (`_ray`).
"""
from ._ray import INSTALL, Address, Cluster, import_ray, parse_address
from ._shards import DEFAULT_SHARD_IMAGES, Shard, plan_shards


def mine(*args, **kwargs):
    """`cnnviz_fast.mine(..., ray=...)`: see `cnnviz_fast.cluster._mine.mine`."""
    from ._mine import mine as _mine

    return _mine(*args, **kwargs)


def project(*args, **kwargs):
    """`cnnviz_fast.project(..., ray=...)`: see `cnnviz_fast.cluster._project.project`."""
    from ._project import project as _project

    return _project(*args, **kwargs)


__all__ = ["INSTALL", "Address", "Cluster", "import_ray", "parse_address", "DEFAULT_SHARD_IMAGES", "Shard",
           "plan_shards", "mine", "project"]
