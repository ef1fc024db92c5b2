"""Images of any PIL mode or array layout as the uint8 RGB arrays the image processors expect.

    rgb = to_rgb(Image.open("photo.png"))      # (H, W, 3) uint8, whatever the file's mode
    rgb = open_image("photo.png")              # the same, UserError naming the file when it cannot be read

Conversion rules (PIL mode, or array dtype / layout):
- "RGB", "L", "1", "P" (no transparency), "CMYK", "YCbCr", "LAB", "HSV", "RGBX": PIL's own conversion to RGB
  (CMYK without an ICC profile: PIL's naive formula, what transformers and LLaVA get too).
- Transparency ("RGBA", "LA", "PA", premultiplied "RGBa"/"La", "P" or "L"/"RGB" with a transparency key):
  composited onto WHITE, exactly as transformers' `convert_to_rgb` does before LLaVA's and Qwen2-VL's image
  processors (LLaVA's own loader, `Image.convert("RGB")`, drops alpha instead and shows whatever colour the
  transparent pixels store - often black).
- Integer samples wider than 8 bits ("I;16*" 16-bit PNG / TIFF, "I", uint16/int arrays): 16-bit data,
  scaled to 8 bits by v / 257 (rounded), unless every value fits 8 bits (<= 255), which is taken as it is
  (PIL's own conversions, e.g. L -> I, keep 8-bit values; a 16-bit file that dark is < 0.4% grey anyway).
  PIL's `convert("RGB")` clips them at 255 instead (a 16-bit photo becomes white).
- Floats ("F", float arrays): [0, 1] is scaled by 255, [0, 255] taken as it is (rounded); NaN / inf or values
  outside [0, 255] are refused.
- Arrays: (H, W), (H, W, C) or (C, H, W) with C in 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA); bool
  is black / white. Channels-last is preferred when both readings are possible.
Empty images (a zero side) are refused (UserError).
"""

from __future__ import annotations

import os

import numpy as np

from jaxvlm.errors import UserError

CHANNELS = (1, 2, 3, 4)
_PIL_ARRAY_MODES = ("I", "F")  # integer / float modes converted through the array rules (also "I;16*")


def to_rgb(image, name: str = "image") -> np.ndarray:
    """A PIL image (any mode) or an array (see the module docstring) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, np.ndarray) or not hasattr(image, "mode"):
        return _array_to_rgb(np.asarray(image), name)
    _check_size(image.size[1], image.size[0], name)
    mode = image.mode
    if mode.startswith("I;16") or mode in _PIL_ARRAY_MODES:
        return _array_to_rgb(np.asarray(image), f"{name} (mode {mode})")
    bands = image.getbands()
    if "A" in bands or "a" in bands or image.info.get("transparency") is not None:
        return _composite_white(image)
    return np.asarray(image.convert("RGB"))


def open_image(path, flag: str = "image") -> np.ndarray:
    """The image file at `path` as (H, W, 3) uint8 RGB (`to_rgb`); UserError naming `flag` and the file when
    it is missing or not an image PIL can read. Multi-frame files give their first frame."""
    from PIL import Image, UnidentifiedImageError

    where = f"{flag} {os.fspath(path)}"
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, where)
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a directory, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UserError(f"{where}: not a readable image ({e})") from None


# ------------------------------------------------------------------------------------------------ pieces


def _check_size(h: int, w: int, name: str) -> None:
    if h < 1 or w < 1:
        raise UserError(f"{name} is empty ({w}x{h} pixels, width x height): every image needs at least 1x1")


def _composite_white(image) -> np.ndarray:
    """transformers' `convert_to_rgb`: RGBA alpha-composited onto an opaque white background."""
    from PIL import Image

    rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def _channels_last(a: np.ndarray, name: str) -> np.ndarray:
    """(H, W) / (H, W, C) / (C, H, W) -> (H, W, C)."""
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim == 3 and a.shape[2] in CHANNELS:
        return a
    if a.ndim == 3 and a.shape[0] in CHANNELS:
        return np.moveaxis(a, 0, -1)
    raise UserError(f"{name} has shape {a.shape}: expected (H, W), (H, W, C) or (C, H, W) with C in "
                    f"{CHANNELS} (grey, grey+alpha, RGB, RGBA)")


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """Samples of any dtype -> uint8 by the module's rules (8-bit as is, 16-bit / 257, floats [0, 1] x 255)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.size == 0:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise UserError(f"{name}: integer samples in [{lo}, {hi}], outside 8-bit [0, 255] and 16-bit "
                            "[0, 65535]")
        if hi <= 255:
            return a.astype(np.uint8)
        return np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            where = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise UserError(f"{name}: sample {where} is {a[where]} (images must be finite)")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 255.0:
            raise UserError(f"{name}: float samples in [{lo:g}, {hi:g}], expected [0, 1] or [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.round(a.astype(np.float64) * scale).astype(np.uint8)
    raise UserError(f"{name}: samples of dtype {a.dtype} are not an image (expected integers, floats or bool)")


def _array_to_rgb(a: np.ndarray, name: str) -> np.ndarray:
    hwc = _channels_last(a, name)
    _check_size(hwc.shape[0], hwc.shape[1], name)
    px = _to_uint8(hwc, name)
    c = px.shape[2]
    if c in (1, 2):
        px = np.concatenate([np.repeat(px[..., :1], 3, axis=2), px[..., 1:]], axis=2)
    if px.shape[2] == 4:  # onto white, as transformers' convert_to_rgb blends RGBA arrays
        alpha = px[..., 3:4].astype(np.float64) / 255.0
        px = np.round(alpha * px[..., :3] + (1.0 - alpha) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(px)
