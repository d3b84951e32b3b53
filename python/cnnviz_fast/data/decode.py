"""Decoding and preprocessing one image: bytes -> RGB -> resize, centre crop -> normalised CHW.

The rules, from the model's `cnnviz.preprocess` metadata (`cnnviz_fast._metadata`):
- Colour: every mode becomes RGB the way torchvision's loader does it (`convert("RGB")`): alpha is
  dropped, palettes expanded, grey replicated, CMYK converted. 16-bit and 32-bit integer greys are
  scaled to 8 bits (v / 257, rounded), not clipped as Pillow's own conversion would; float images
  are taken as 0..255 and clipped. Animated images give their first frame. EXIF orientation is not
  applied (torchvision does not either, and models are trained that way).
- Geometry: the shorter side is resized to `resize` (the longer one to int(resize * long / short),
  torchvision's rule), bilinear with antialiasing (Pillow), then the centre `crop` is taken (offset
  round((size - crop) / 2)). An image smaller than the crop is therefore upscaled, as torchvision
  does, not refused. Resize and crop are done as one Pillow resize of the source box that maps onto
  the crop: the same filter, about twice as fast as resizing the whole image (fewer output pixels),
  never a huge intermediate for extreme aspect ratios, and within two grey levels of
  resize-then-crop on a few pixels (the filter coefficients round differently).
- Values: out[c] = pixel * a[c] + b[c] with a = 1 / (scale * std), b = -mean / std, in float32 with
  each step rounded (`Preprocess.affine`; a 256-entry table per channel here, the same two ops in the
  mining graph when batches travel as uint8); mean and std are given in RGB order; channel_order
  "BGR" reverses the output channels.
- JPEG draft mode (optional): libjpeg decodes at 1/2, 1/4 or 1/8 scale when the shorter side stays
  at least `draft_factor` * resize; see `Preprocess.draft`.
- Limits: an image over Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) is refused.

Failures raise `DecodeError` whose message is a readable reason, stored in results.db's errors table.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class DecodeError(Exception):
    """An image that cannot be used; str(error) is the reason recorded in results.db."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor (see the module docstring).

    `crop` is (height, width). `draft` enables JPEG draft decoding; `draft_factor` is how much
    larger than `resize` the shorter side must stay after draft scaling (2 keeps the final
    antialiased resize doing most of the reduction, which keeps results close to a full decode).
    """

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    scale: float = 255.0
    interpolation: str = "bilinear"
    draft: bool = False
    draft_factor: int = 2

    @classmethod
    def from_metadata(cls, meta: dict, input_hw: tuple[int, int] | None = None, draft: bool = False) -> "Preprocess":
        """From a `cnnviz.preprocess` dict; `input_hw`, when given, must equal the crop.

        ValueError (a message naming the key) for a missing key or an unusable value: a std or
        scale that is zero, negative or not finite, a mean or std that is not three numbers, a
        resize or crop below one pixel, an unknown channel order or interpolation.
        """
        for key in ("resize", "crop", "mean", "std"):
            if key not in meta:
                raise ValueError(f"preprocess has no {key!r}")
        crop = meta["crop"]
        crop = (crop, crop) if isinstance(crop, (int, float)) and not isinstance(crop, bool) else crop
        if not isinstance(crop, (list, tuple)) or len(crop) != 2 or not all(_whole(v) for v in crop):
            raise ValueError(f"preprocess crop must be a positive integer or [height, width], not {meta['crop']!r}")
        crop = (int(crop[0]), int(crop[1]))
        if input_hw is not None and tuple(input_hw) != crop:
            raise ValueError(f"the model's preprocessing crops {crop[0]}x{crop[1]} but its input is "
                             f"{input_hw[0]}x{input_hw[1]}")
        if not _whole(meta["resize"]):
            raise ValueError(f"preprocess resize (the shorter side) must be a positive integer, "
                             f"not {meta['resize']!r}")
        mean, std = _triple(meta, "mean"), _triple(meta, "std")
        if not all(s > 0 for s in std):
            raise ValueError(f"preprocess std must be positive (it divides), not {list(meta['std'])}")
        scale = meta.get("scale", 255.0)
        if not _number(scale) or not float(scale) > 0:
            raise ValueError(f"preprocess scale must be a positive number (pixel / scale), not {scale!r}")
        order = str(meta.get("channel_order", "RGB")).upper()
        if order not in ("RGB", "BGR"):
            raise ValueError(f"preprocess channel_order must be RGB or BGR, not {order!r}")
        interp = str(meta.get("interpolation", "bilinear")).lower()
        if interp not in _INTERPOLATION:
            raise ValueError(f"preprocess interpolation {interp!r} unknown; one of {sorted(_INTERPOLATION)}")
        return cls(resize=int(meta["resize"]), crop=crop, mean=mean, std=std,
                   channel_order=order, scale=float(scale), interpolation=interp, draft=bool(draft))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """The inverse of `to_dict` (e.g. results.db's run key "preprocess", for later passes)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop"] = list(self.crop)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not self.draft:
            d.pop("draft_factor")
        return d

    @property
    def shape(self) -> tuple[int, int, int]:
        """The output tensor's shape (3, H, W)."""
        return 3, self.crop[0], self.crop[1]

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (a [3], b [3]) in output channel order: normalised = float32(pixel) * a + b, each
        step rounded to float32 (how the mining graph normalises uint8 input, and the tables)."""
        a = [1.0 / (self.scale * s) for s in self.std]
        b = [-m / s for m, s in zip(self.mean, self.std)]
        if self.channel_order == "BGR":
            a.reverse()
            b.reverse()
        return np.asarray(a, np.float32), np.asarray(b, np.float32)

    def tables(self) -> np.ndarray:
        """float32 [3, 256]: row c maps a uint8 value of output channel c to its normalised value."""
        a, b = self.affine()
        v = np.arange(256, dtype=np.float32)
        return np.stack([v * a[c] + b[c] for c in range(3)])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _whole(v) -> bool:
    return _number(v) and float(v) == int(v) and int(v) >= 1


def _triple(meta: dict, key: str) -> tuple[float, float, float]:
    v = meta[key]
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_number(x) for x in v):
        raise ValueError(f"preprocess {key} must be three finite numbers (R, G, B), not {v!r}")
    return tuple(float(x) for x in v)


def open_image(data: bytes) -> Image.Image:
    """Identify `data` (nothing decoded yet); DecodeError for empty, unknown or oversized images."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        # Between MAX_IMAGE_PIXELS and twice that Pillow only warns (the miner silences that warning
        # for its run); such images are refused below all the same.
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # (the warning arrives as an exception where warnings are turned into errors)
        raise DecodeError(f"image too large (decompression-bomb limit): {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(f"not an image Pillow can read ({len(data)} bytes starting {_head(data)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise DecodeError(_reason(exc, "image header")) from None
    w, h = im.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise DecodeError(f"image too large: {w}x{h} = {w * h} pixels exceeds Pillow's decompression-bomb "
                          f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)")
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h})")
    return im


def load_crop(data: bytes, pre: Preprocess) -> np.ndarray:
    """uint8 [H, W, 3]: the decoded RGB image resized and centre-cropped (no normalisation)."""
    im = open_image(data)
    try:
        if pre.draft and im.format == "JPEG":
            side = pre.resize * pre.draft_factor
            im.draft(im.mode, (side, side))
        im.load()
        rgb = _to_rgb(im)
        return np.asarray(_resize_crop(rgb, im.size, pre))
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large (decompression-bomb limit): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error, MemoryError) as exc:
        raise DecodeError(_reason(exc, f"{im.format or 'image'} data")) from None


def decode_into(data: bytes, pre: Preprocess, out: np.ndarray, tables: np.ndarray | None = None) -> None:
    """Decode and preprocess `data` into `out`, a slot of a batch buffer: float32 [3, H, W]
    (normalised), or uint8 [H, W, 3] (resized and cropped, channels in the output order; the
    mining graph normalises it with `Preprocess.affine`)."""
    crop = load_crop(data, pre)
    if out.dtype == np.uint8:
        out[...] = crop[:, :, ::-1] if pre.channel_order == "BGR" else crop
        return
    lut = pre.tables() if tables is None else tables
    src = (2, 1, 0) if pre.channel_order == "BGR" else (0, 1, 2)
    for c in range(3):
        np.take(lut[c], crop[:, :, src[c]], out=out[c])


def decode(data: bytes, pre: Preprocess) -> np.ndarray:
    """float32 [3, H, W]: `data` decoded and preprocessed."""
    out = np.empty(pre.shape, np.float32)
    decode_into(data, pre, out)
    return out


def _reason(exc: BaseException, what: str) -> str:
    msg = str(exc) or type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return f"truncated file ({what} ends early): {msg}"
    return f"corrupt {what}: {msg}"


def _head(data: bytes) -> str:
    head = data[:8]
    if all(32 <= b < 127 for b in head):
        return repr(head.decode("ascii"))
    return head.hex(" ")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "F":
        grey = np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        # Pillow asks for palette images with transparency to go through RGBA; alpha is then dropped.
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def _resize_crop(im: Image.Image, size: tuple[int, int], pre: Preprocess) -> Image.Image:
    """The centre crop of the shorter-side resize, as one resize of the matching source box."""
    w, h = size
    ch, cw = pre.crop
    if w <= h:
        rw, rh = pre.resize, int(pre.resize * h / w)
    else:
        rw, rh = int(pre.resize * w / h), pre.resize
    top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
    if (rw, rh) == (w, h):
        if top >= 0 and left >= 0:
            return im.crop((left, top, left + cw, top + ch))
    sx, sy = w / rw, h / rh
    # Parts of the crop outside the resized image (resize < crop) stay black, as torchvision pads.
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ch, rh), min(left + cw, rw)
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    part = im.resize((x1 - x0, y1 - y0), _INTERPOLATION[pre.interpolation], box=box)
    if (x0 - left, y0 - top, x1 - x0, y1 - y0) == (0, 0, cw, ch):
        return part
    canvas = Image.new("RGB", (cw, ch))
    canvas.paste(part, (x0 - left, y0 - top))
    return canvas

