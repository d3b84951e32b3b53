"""Shared fixtures and helpers of the miner's tests (imported by the mining, data, integrity and cluster tests).

A tiny CNN (three Conv+ReLU layers, one max-pool, 32x32 input) exported with the zoo's exporter,
small generated JPEG datasets, the bad-input zoo, and readers for results.db.
"""
from __future__ import annotations

import io
import os
import sqlite3
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PRE = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "channel_order": "RGB", "scale": 255.0}
ROOT = Path(__file__).resolve().parents[2]


def tiny_module():
    """The tiny CNN as a torch module, seeded (the same weights every call)."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.c2, self.r2 = nn.Conv2d(8, 16, 3), nn.ReLU()
            self.c3, self.r3 = nn.Conv2d(16, 12, 3, stride=2), nn.ReLU()

        def forward(self, x):
            return self.r3(self.c3(self.r2(self.c2(self.pool(self.r1(self.c1(x)))))))

        def taps(self):
            return [("conv1", self.r1), ("conv2", self.r2), ("conv3", self.r3)]

    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """Path of the tiny model's ONNX file."""
    from cnnviz_fast.zoo.export import export_onnx

    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(tiny_module(), path, input_size=(3, 32, 32), preprocess=PRE, model_name="tiny")
    return path


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """A folder of 240 generated 40x40 JPEGs in class subfolders."""
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("images")
    generate(root, 240, seed=1, size=40)
    return root


def jpeg(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def png(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG", **kw)
    return b.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG file declaring a w x h 1-bit image (its data is never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def photo(seed: int = 0, size=(50, 40)) -> Image.Image:
    """A smooth random RGB picture."""
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 8 + 2, size[0] // 8 + 2, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (30, 30), c) for c in [(250, 10, 10), (10, 250, 10)]]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return b.getvalue()


def bad_zoo() -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, None if it must decode, else a word its error reason contains)."""
    rgb = photo(3)
    good = jpeg(rgb)
    rng = np.random.default_rng(7)
    return {
        "zero.jpg": (b"", "empty"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "random.jpg": (rng.bytes(3000), "not an image"),
        "text.jpg": (b"just some text, not a picture\n" * 20, "not an image"),
        "bomb.png": (bomb_png(10000, 10000), "too large"),
        "bigbomb.png": (bomb_png(20000, 20000), "too large"),
        "rgba.png": (png(rgb.convert("RGBA")), None),
        "palette.png": (png(rgb.convert("P")), None),
        "palette_alpha.png": (png(rgb.convert("P"), transparency=0), None),
        "grey.jpg": (jpeg(rgb.convert("L")), None),
        "cmyk.jpg": (jpeg(rgb.convert("CMYK")), None),
        "deep16.png": (png(Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))), None),
        "animated.gif": (animated_gif(), None),
        "small.jpg": (jpeg(rgb.resize((6, 5))), None),
    }


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def folder_files(root: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every file under root, in sorted relative-path order."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [(name, (root / name).read_bytes()) for name in files]


def tables(db: Path, names=("topk", "unit_stats", "errors")) -> dict[str, list[tuple]]:
    """Whole tables, sorted, for exact comparison."""
    con = sqlite3.connect(db)
    try:
        return {n: sorted(con.execute(f"SELECT * FROM {n}").fetchall(), key=repr) for n in names}
    finally:
        con.close()


def query(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `python -m cnnviz_fast mine ARGS` and capture its output."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "cnnviz_fast", "mine", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)
