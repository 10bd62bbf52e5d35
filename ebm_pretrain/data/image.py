"""Decoding one image file, shared by classification and segmentation.

Whatever a folder holds, a decodable file becomes the picture a photo viewer
shows: EXIF orientation applied, palette and 16-bit images converted (16-bit
values scaled by 255/65535, not clipped), CMYK to RGB, transparency composited
onto white. Anything else raises :class:`UndecodableImage`, which the pipeline
counts as a skipped image. A file whose header claims more than
``MAX_PIXELS`` pixels (a "decompression bomb") is refused from its header,
before its pixels are allocated: the largest image decoded holds 64
megapixels, about 256 MB as RGBA during conversion.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UndecodableImage(ValueError):
  """Not an image, truncated, empty, or over the pixel limit."""


def _open(data: bytes) -> Image.Image:
  if not data:
    raise UndecodableImage("an empty file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))  # reads the header only
  except UnidentifiedImageError:
    raise UndecodableImage("not an image (no header of a format Pillow reads)") from None
  except (OSError, ValueError, Image.DecompressionBombWarning,
          Image.DecompressionBombError) as e:
    raise UndecodableImage(f"not a readable image ({e})") from None
  w, h = im.size
  if w * h > MAX_PIXELS:
    raise UndecodableImage(f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,} "
                           "(data.image.MAX_PIXELS): refused before decoding")
  if w < 1 or h < 1:
    raise UndecodableImage(f"empty image {w}x{h}")
  return im


def _as_viewed(im: Image.Image) -> Image.Image:
  """The picture as a viewer shows it: L or RGB, 8 bits."""
  im = ImageOps.exif_transpose(im)
  if im.mode in _SIXTEEN_BIT:
    values = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values * 255 / 65535), 0, 255).astype(np.uint8))
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  if im.mode in ("L", "RGB"):
    return im
  return im.convert("RGB")  # CMYK, YCbCr, 1-bit, LAB, ...


def decode_image(image: Any, channels: int) -> np.ndarray:
  """bytes (JPEG/PNG) or a uint8 array -> uint8 [H, W, channels]; raises
  :class:`UndecodableImage` for what cannot be decoded."""
  if isinstance(image, (bytes, bytearray)):
    im = _open(bytes(image))
    try:
      im = _as_viewed(im)
      im = im.convert("L") if channels == 1 else im.convert("RGB")
      arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
      raise UndecodableImage(f"cannot decode its pixels ({e})") from None
  else:
    arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise UndecodableImage(f"empty image {arr.shape}")
  if arr.shape[-1] != channels:
    if arr.shape[-1] == 1:
      arr = np.repeat(arr, channels, axis=-1)
    elif channels == 1:
      arr = np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))[..., None]
    else:
      raise UndecodableImage(f"image has {arr.shape[-1]} channels, expected {channels}")
  return arr.astype(np.uint8)


def decode_label_map(data: bytes) -> np.ndarray:
  """A segmentation label map's class ids, uint8 [H, W]: the stored values of an
  L or palette PNG as they are (a palette's indices, not its colours)."""
  im = _open(bytes(data))
  try:
    if im.mode in ("L", "P"):
      return np.asarray(im)
    return np.asarray(im.convert("L"))
  except (OSError, ValueError, SyntaxError) as e:
    raise UndecodableImage(f"cannot decode the label map ({type(e).__name__}: {e})") from None
