"""results.db's name, schema and value encoding, defined once (the writer creates it, the reader
checks it). Users query these tables directly; keep them as they are.

Tables (SQLite, WAL), as DESIGN.md and README document them:
  run(key, value)                    configuration and provenance, values JSON
  images(image_id, path)             the manifest, written once when the run is created
  topk(layer, unit, rank, value, image_id, y, x)   rank 0 strongest; y, x in the layer's map
  unit_stats(layer, unit, images, mean_max, firing_rate, max)   NULL statistics before any image
  errors(image_id, path, error)      images that could not be used, with a readable reason
Bookkeeping for resume:
  progress(key, value)               status (running | stopped | finished), next_batch,
                                     images_done, checkpoints, elapsed_s, updated
  unit_sums(layer, unit, sum_max, fired)   the exact accumulators behind mean_max and firing_rate
Each unit's distribution of per-image maxima (created by `_hist.py`, which documents the bins):
  unit_hist(layer, unit, bin, count) images whose maximum fell in fixed bin `bin`; nonzero counts only
"""
from __future__ import annotations

import json

DB_NAME = "results.db"
# PRAGMA user_version of the databases this release writes (0: written before versions existed;
# `_check.verify` refuses a newer one). Bump it when a table changes meaning.
SCHEMA_VERSION = 1
# Tables every results.db has, whoever wrote it; progress and unit_sums are the miner's own.
REQUIRED_TABLES = ("run", "images", "topk", "unit_stats")
SCHEMA = """
CREATE TABLE run(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images(image_id INTEGER PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE topk(layer TEXT NOT NULL, unit INTEGER NOT NULL, rank INTEGER NOT NULL, value REAL NOT NULL,
                  image_id INTEGER NOT NULL, y INTEGER NOT NULL, x INTEGER NOT NULL,
                  PRIMARY KEY (layer, unit, rank)) WITHOUT ROWID;
CREATE TABLE unit_stats(layer TEXT NOT NULL, unit INTEGER NOT NULL, images INTEGER NOT NULL, mean_max REAL,
                        firing_rate REAL, max REAL, PRIMARY KEY (layer, unit)) WITHOUT ROWID;
CREATE TABLE errors(image_id INTEGER PRIMARY KEY, path TEXT NOT NULL, error TEXT NOT NULL);
CREATE TABLE progress(key TEXT PRIMARY KEY, value);
CREATE TABLE unit_sums(layer TEXT NOT NULL, unit INTEGER NOT NULL, sum_max REAL NOT NULL, fired INTEGER NOT NULL,
                       PRIMARY KEY (layer, unit)) WITHOUT ROWID;
"""


def encode_value(value) -> str:
    """A run/progress value as stored: JSON with sorted keys, so equal configurations compare equal."""
    return json.dumps(value, sort_keys=True)


def decode_value(text):
    """The inverse of `encode_value`; text that is not JSON (a hand-written database) as it is."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
