"""RandAugment on uint8 images with Pillow: timm's ``rand-m9-mstd0.5-inc1``, the
fine-tuning augmentation of MAE and of the paper (Table A: RandAug (9, 0.5)).

Each image gets ``num_ops`` ops drawn uniformly (with replacement) from the
"increasing" set; each op is applied with probability 0.5 at a magnitude drawn
from N(magnitude, magnitude_std) clipped to [0, 10]. Geometric ops fill with
mid-grey, as timm does.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = 128


def _signed(v: float, rng: np.random.Generator) -> float:
  return -v if rng.uniform() < 0.5 else v


def _affine(im, matrix):
  return im.transform(im.size, Image.AFFINE, matrix, resample=Image.BILINEAR,
                      fillcolor=FILL if im.mode == "L" else (FILL,) * 3)


# op(image, level in [0, 1], rng) -> image
def _rotate(im, m, rng):
  return im.rotate(_signed(30.0 * m, rng), resample=Image.BILINEAR,
                   fillcolor=FILL if im.mode == "L" else (FILL,) * 3)


def _shear_x(im, m, rng):
  return _affine(im, (1, _signed(0.3 * m, rng), 0, 0, 1, 0))


def _shear_y(im, m, rng):
  return _affine(im, (1, 0, 0, _signed(0.3 * m, rng), 1, 0))


def _translate_x(im, m, rng):
  return _affine(im, (1, 0, _signed(0.45 * m, rng) * im.size[0], 0, 1, 0))


def _translate_y(im, m, rng):
  return _affine(im, (1, 0, 0, 0, 1, _signed(0.45 * m, rng) * im.size[1]))


def _enhance(cls):
  def op(im, m, rng):
    return cls(im).enhance(1.0 + _signed(0.9 * m, rng))
  return op


def _posterize(im, m, rng):
  return ImageOps.posterize(im, 8 - int(4 * m))  # increasing: fewer bits


def _solarize(im, m, rng):
  return ImageOps.solarize(im, 256 - int(256 * m))  # increasing: lower threshold


def _solarize_add(im, m, rng):
  arr = np.asarray(im).astype(np.int32)
  add = int(110 * m)
  return Image.fromarray(np.where(arr < 128, np.minimum(arr + add, 255), arr).astype(np.uint8))


OPS = {
    "AutoContrast": lambda im, m, rng: ImageOps.autocontrast(im),
    "Equalize": lambda im, m, rng: ImageOps.equalize(im),
    "Invert": lambda im, m, rng: ImageOps.invert(im),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}
OP_NAMES = tuple(OPS)


def rand_augment(arr: np.ndarray, rng: np.random.Generator, *, num_ops: int = 2,
                 magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = 0.5) -> np.ndarray:
  """uint8 [H, W, C] (C = 1 or 3) -> uint8 [H, W, C]."""
  squeeze = arr.shape[-1] == 1
  im = Image.fromarray(arr[..., 0] if squeeze else arr)
  for name in rng.choice(OP_NAMES, size=num_ops):
    if rng.uniform() >= prob:
      continue
    m = magnitude if magnitude_std <= 0 else rng.normal(magnitude, magnitude_std)
    im = OPS[str(name)](im, float(np.clip(m, 0.0, MAX_LEVEL)) / MAX_LEVEL, rng)
  out = np.asarray(im, np.uint8)
  return out[..., None] if squeeze else out
