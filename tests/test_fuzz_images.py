"""Fuzzing the image loader (issue 11): a few hundred mutated files, made here from real JPEG, PNG,
GIF, WebP, BMP and TIFF bytes (truncated, bytes flipped, headers replaced by random bytes, bodies
replaced, middles cut out, runs inserted), go through the batch loader and through the miner in a
real process. Never a traceback, never a hang past a bound, every file Pillow itself cannot load
recorded as an error with a reason, and nothing decoded that Pillow cannot load.

The seed is fixed so a failure can be replayed; CNNVIZ_FUZZ_SEED picks another.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, features

from cnnviz_fast.data import BatchLoader, Preprocess, open_manifest
from _support.mining import PRE, ROOT, photo, query, tiny  # noqa: F401

SEED = int(os.environ.get("CNNVIZ_FUZZ_SEED", "11"))
REPEATS = 8  # files per (format, mutation): 6 formats x 6 mutations x 8 = 288 mutants
FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


def _originals() -> dict[str, bytes]:
    out = {}
    for k, (fmt, ext) in enumerate(FORMATS.items()):
        if fmt == "WEBP" and not features.check("webp"):
            continue
        b = io.BytesIO()
        im = photo(k, (64, 48))
        (im.convert("P") if fmt == "GIF" else im).save(b, fmt)
        out[ext] = b.getvalue()
    return out


def _mutants(rng: np.random.Generator, data: bytes) -> dict[str, bytes]:
    n = len(data)
    a = np.frombuffer(data, np.uint8).copy()
    flips = rng.integers(0, n, int(rng.integers(1, 17)))
    a[flips] ^= rng.integers(1, 256, len(flips)).astype(np.uint8)
    h = int(rng.integers(1, min(64, n)))
    i, j = sorted(int(v) for v in rng.integers(0, n, 2))
    return {
        "trunc": data[:int(rng.integers(0, n))],
        "flip": a.tobytes(),
        "header": rng.bytes(h) + data[h:],
        "body": data[:h] + rng.bytes(n - h),
        "cut": data[:i] + data[j:],
        "insert": data[:i] + bytes([int(rng.integers(0, 256))]) * int(rng.integers(1, 4096)) + data[i:],
    }


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    files = {}
    for ext, data in _originals().items():
        files[f"orig.{ext}"] = data
        for r in range(REPEATS):
            for kind, mutant in _mutants(rng, data).items():
                # a few land under another format's extension: the content, not the name, decides
                name_ext = ext if r % 4 else rng.choice(list(FORMATS.values()))
                files[f"{ext}_{kind}_{r}.{name_ext}"] = mutant
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root, files


def _pillow_loads(data: bytes) -> bool:
    """The independent oracle: Pillow's own full decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im.convert("RGB")
        return True
    except Exception:
        return False


def _within(seconds: float, fn):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the loader did not finish the fuzz set within {seconds} s"
    return box["v"]


def test_loader_records_every_bad_file_and_never_raises(zoo):
    root, files = zoo
    assert len(files) >= 250
    m = open_manifest(root)
    pre = Preprocess.from_metadata(PRE)

    def run():
        decoded, errors = set(), {}
        with BatchLoader(m, pre, batch_size=16, workers=2, layout="uint8") as loader:
            for batch in loader:
                decoded.update(m.name(int(i)) for i in batch.ids)
                errors.update((m.name(i), reason) for i, _, reason in batch.errors)
        return decoded, errors

    decoded, errors = _within(300, run)
    assert decoded | set(errors) == set(files) and not decoded & set(errors)
    assert all(reason and "unexpected" not in reason for reason in errors.values()), \
        {n: r for n, r in errors.items() if "unexpected" in r}
    for name, data in files.items():
        if not _pillow_loads(data):
            assert name in errors, name
        if name in decoded:
            assert _pillow_loads(data), name
    assert {n for n in files if n.startswith("orig.")} <= decoded
    assert len(errors) > len(files) // 3  # the mutations did break files


def test_miner_in_a_real_process_finishes_and_records_them(zoo, tiny, tmp_path):
    root, files = zoo
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cnnviz_fast", "mine", str(tiny), str(root), "--out", str(out),
                        "--top-k", "2", "--batch-size", "16", "--workers", "2", "--max-error-rate", "1",
                        "--quiet"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    db = out / "results.db"
    failed = {os.path.basename(p) for (p,) in query(db, "SELECT path FROM errors")}
    seen = query(db, "SELECT MAX(images) FROM unit_stats")[0][0]
    assert seen + len(failed) == len(files)
    assert {n for n, data in files.items() if not _pillow_loads(data)} <= failed
    assert not any(n.startswith("orig.") for n in failed)
