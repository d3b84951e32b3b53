"""cnnviz_fast.render: display normalisation, patch cutting, grids, the inverse preprocessing."""
import numpy as np
import pytest

from cnnviz_fast import render
from cnnviz_fast.data import Preprocess


def test_display_is_half_plus_half_r_over_max_abs():
    r = np.zeros((3, 2, 2), np.float32)
    r[0, 0, 0], r[1, 1, 1], r[2, 0, 1] = 2.0, -4.0, 1.0
    d = render.display(r)
    assert d.shape == (2, 2, 3) and d.dtype == np.uint8
    want = np.clip(np.rint((0.5 + 0.5 * r / 4.0) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(d, np.moveaxis(want, 0, -1))
    assert d[1, 1, 1] == 0 and d[0, 0, 1] == 128
    assert np.all(render.display(np.zeros((3, 4, 4))) == 128)   # all-zero: plain grey


def test_cut_zero_pads_off_the_image():
    img = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) + 1
    p = render.cut(img, (-1, 3, 2, 7))
    assert p.shape == (2, 3, 4)
    assert np.all(p[:, 0] == 0) and np.all(p[:, :, 2:] == 0)
    assert np.array_equal(p[:, 1:, :2], img[:, 0:2, 3:5])
    assert np.all(render.cut(img, (10, 10, 12, 12)) == 0)


def test_grid_layout_and_empty_cells():
    tiles = [np.full((2, 3, 3), i * 20, np.uint8) for i in range(5)] + [None]
    g = render.grid(tiles, pad=1)
    assert g.shape == (2 * 2 + 3, 3 * 3 + 4, 3)   # 6 cells: 3 columns, 2 rows
    assert np.all(g[1:3, 1:4] == 0) and np.all(g[1:3, 5:8] == 20) and np.all(g[4:6, 5:8] == 80)
    assert np.all(g[4:6, 9:12] == render.BACKGROUND)
    big = render.grid(tiles[:1], min_tile=7)
    assert big.shape == (2 * 3 + 2, 3 * 3 + 2, 3)   # factor 3 brings the longer side to >= 7
    with pytest.raises(ValueError):
        render.grid([None])


def test_unnormalise_inverts_the_preprocessing():
    pre = Preprocess.from_metadata({"resize": 8, "crop": 8, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
                                    "channel_order": "BGR"})
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tables = pre.tables()
    x = np.stack([tables[c][rgb[:, :, (2, 1, 0)[c]]] for c in range(3)])
    assert np.array_equal(render.unnormalise(x, pre.mean, pre.std, pre.scale, pre.channel_order), rgb)


def test_filter_tiles_and_stale_tile():
    w = np.random.default_rng(1).normal(size=(6, 3, 5, 5)).astype(np.float32)
    g = render.filter_tiles(w, min_tile=10)
    assert g.shape == (2 * 10 + 3, 3 * 10 + 4, 3)
    assert np.array_equal(g[1:11, 1:11], render.enlarge(render.display(w[0]), 2))
    grey = render.filter_tiles(np.ones((2, 1, 3, 3)), min_tile=0)
    assert np.all(grey[1:4, 1:4] == 255)
    hatch = render.stale_tile(12, 12)
    assert (hatch == render.STALE).all(axis=-1).any() and (hatch == 255).all(axis=-1).any()


def test_save_png_round_trip(tmp_path):
    from PIL import Image

    img = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = render.save_png(tmp_path / "a" / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(path)), img)
    assert not list((tmp_path / "a").glob(".*"))   # no temporary left behind
