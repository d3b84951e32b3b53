"""The data pipeline: a dataset as a manifest of stable image ids, decoding and preprocessing from
the model's metadata, and parallel decode workers feeding fixed batches through a bounded queue.

    from cnnviz_fast.data import open_manifest, Preprocess, BatchLoader
    manifest = open_manifest("train/")                      # or a list file, or "shard-{000..146}.tar"
    pre = Preprocess.from_metadata(model.preprocess, model.input_size[1:])
    with BatchLoader(manifest, pre, batch_size=32, workers=2) as loader:
        for batch in loader:                                # batch.ids, batch.images, batch.errors
            ...

Only regular files are read, each at most `max_bytes` (`open_manifest(data, max_bytes=N)`, default
DEFAULT_MAX_BYTES = 256 MiB); names that are not UTF-8 are shown through `readable_name`.
"""
from ._files import DEFAULT_MAX_BYTES, readable_name
from .decode import DecodeError, Preprocess, decode, decode_into, load_crop, open_image
from .loader import Batch, BatchLoader, default_workers
from .manifest import IMAGE_EXTENSIONS, Manifest, is_image_name, open_manifest

__all__ = ["DecodeError", "Preprocess", "decode", "decode_into", "load_crop", "open_image", "Batch",
           "BatchLoader", "default_workers", "IMAGE_EXTENSIONS", "Manifest", "is_image_name", "open_manifest",
           "DEFAULT_MAX_BYTES", "readable_name"]
