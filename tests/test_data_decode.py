"""Decoding and preprocessing: geometry, normalisation, colour modes, and the bad-input zoo."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnviz_fast.data import DecodeError, Preprocess, decode, load_crop
from _support.mining import PRE, animated_gif, bad_zoo, jpeg, photo, png

pre = Preprocess.from_metadata(PRE)


def reference_crop(im: Image.Image, p: Preprocess) -> np.ndarray:
    """torchvision's Resize(shorter side) + CenterCrop, written out with Pillow."""
    w, h = im.size
    rw, rh = (p.resize, int(p.resize * h / w)) if w <= h else (int(p.resize * w / h), p.resize)
    full = im.resize((rw, rh), Image.Resampling.BILINEAR)
    ch, cw = p.crop
    top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
    return np.asarray(full.crop((left, top, left + cw, top + ch)))


@pytest.mark.parametrize("size", [(50, 40), (40, 50), (36, 36), (37, 91), (300, 200), (20, 12), (5, 7), (33, 1)])
def test_resize_then_centre_crop(size):
    im = photo(1, size)
    got = load_crop(png(im), pre).astype(int)
    want = reference_crop(im, pre).astype(int)
    assert got.shape == (32, 32, 3)
    # One resize of the source box instead of resize-then-crop: the same filter with coefficients
    # rounded differently (two fixed-point passes), so at most two grey levels apart on few pixels.
    assert np.abs(got - want).max() <= 2
    assert np.abs(got - want).mean() < 0.3


def test_resize_smaller_than_crop_pads_black():
    p = Preprocess.from_metadata(dict(PRE, resize=24))
    im = Image.new("RGB", (40, 40), (255, 255, 255))
    crop = load_crop(png(im), p)
    assert crop.shape == (32, 32, 3)
    assert crop[:4].max() == 0 and crop[16, 16].min() == 255


def test_normalisation_and_channel_order():
    im = photo(2, (36, 36))
    raw = np.asarray(im).astype(np.float64)[2:34, 2:34]
    x = decode(png(im), pre)
    want = (raw / 255.0 - np.array(PRE["mean"])) / np.array(PRE["std"])
    np.testing.assert_allclose(x, want.transpose(2, 0, 1).astype(np.float32), rtol=0, atol=1e-6)
    bgr = decode(png(im), Preprocess.from_metadata(dict(PRE, channel_order="BGR")))
    np.testing.assert_array_equal(bgr, x[::-1])


def test_colour_modes_become_rgb():
    rgb = photo(3)
    base = decode(png(rgb), pre)
    np.testing.assert_array_equal(decode(png(rgb.convert("RGBA")), pre), base)
    pal = rgb.convert("P")
    np.testing.assert_array_equal(decode(png(pal), pre), decode(png(pal.convert("RGB")), pre))
    np.testing.assert_array_equal(decode(png(pal, transparency=0), pre), decode(png(pal.convert("RGB")), pre))
    grey = decode(jpeg(rgb.convert("L")), pre)
    assert np.allclose(grey[0] * PRE["std"][0] + PRE["mean"][0], grey[1] * PRE["std"][1] + PRE["mean"][1], atol=1e-5)
    cmyk = jpeg(rgb.convert("CMYK"), quality=95)
    assert np.abs(decode(cmyk, pre) - base).mean() < 0.2  # lossy JPEG, but the same picture


def test_sixteen_bit_png_is_scaled_not_clipped():
    grey8 = np.asarray(photo(4).convert("L"))
    deep = png(Image.fromarray(grey8.astype(np.uint16) * 257))
    assert Image.open(__import__("io").BytesIO(deep)).mode.startswith("I")
    np.testing.assert_array_equal(decode(deep, pre), decode(png(Image.fromarray(grey8).convert("RGB")), pre))


def test_animated_gif_gives_first_frame():
    x = decode(animated_gif(), pre)
    red = x[0] * PRE["std"][0] + PRE["mean"][0]
    green = x[1] * PRE["std"][1] + PRE["mean"][1]
    assert red.mean() > 0.9 and green.mean() < 0.1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", sorted(bad_zoo()))
def test_bad_input_zoo(name):
    data, reason = bad_zoo()[name]
    if reason is None:
        x = decode(data, pre)
        assert x.shape == (3, 32, 32) and np.isfinite(x).all()
    else:
        with pytest.raises(DecodeError, match=reason):
            decode(data, pre)


def test_draft_mode_is_close_to_a_full_decode():
    big = photo(5, (400, 300))
    data = jpeg(big, quality=92)
    p = Preprocess.from_metadata(PRE)
    full = decode(data, p)
    drafted = decode(data, Preprocess.from_metadata(PRE, draft=True))
    assert not np.array_equal(full, drafted)  # 300 >= 2 * 2 * 36: decoded at a quarter scale
    assert np.abs(full - drafted).mean() < 0.05
    # Too small for draft scaling: identical.
    small = jpeg(photo(5, (100, 80)))
    np.testing.assert_array_equal(decode(small, p), decode(small, Preprocess.from_metadata(PRE, draft=True)))


def test_metadata_checks():
    with pytest.raises(ValueError, match="crops 32x32 but its input is 64x64"):
        Preprocess.from_metadata(PRE, input_hw=(64, 64))
    with pytest.raises(ValueError, match="channel_order"):
        Preprocess.from_metadata(dict(PRE, channel_order="GBR"))
    p = Preprocess.from_metadata(dict(PRE, crop=[32, 48]), draft=True)
    assert p.shape == (3, 32, 48)
    assert Preprocess.from_dict(p.to_dict()) == p and Preprocess.from_dict(pre.to_dict()) == pre
