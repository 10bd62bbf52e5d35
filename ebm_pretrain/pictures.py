"""Pictures a person can read: grids of image columns (corrupted, each restoration
step, original; or shuffled, each sorting step, in place; or a segmentation's
image, prediction and ground truth as colour overlays), every image scaled
up (nearest neighbour) to at least ``MIN_SIZE`` pixels, under a header row
naming the columns. The training loop writes them to PNG and TensorBoard;
``python -m ebm_pretrain.restore`` draws one for a user's own images."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ebm_pretrain.data import normalization

MIN_SIZE = 96    # pixels: the smallest image side drawn
HEADER = 18      # pixels: the header row's height
PAD = 2


def upscale(images: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
  """[B, H, W, C] -> each side multiplied by the smallest integer that brings
  the shorter one to ``min_size`` or more (nearest neighbour: pixels stay square
  and sharp, no interpolated detail)."""
  factor = max(1, -(-min_size // min(images.shape[1:3])))
  return images.repeat(factor, axis=1).repeat(factor, axis=2)


def label(name: str) -> str:
  """A column key as a header: ``step_2`` -> ``step 2``."""
  return name.replace("_", " ")


REFERENCE = ("original", "in_place")  # the columns drawn last: what the steps aim at


def column_order(name: str) -> tuple:
  """Sort key of a column: the start (corrupted, shuffled) first, then ``step_k``
  by k, then the reference. A jitted function returns its dict with the keys
  sorted alphabetically ("original" before "step_1"), so the order is restored
  here rather than trusted."""
  if name.startswith("step_") and name[5:].isdigit():
    return (1, int(name[5:]), name)
  return (2 if name in REFERENCE else 0, 0, name)


def _font():
  try:
    return ImageFont.load_default(size=12)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def grid(columns: dict[str, np.ndarray], mean, std, min_size: int = MIN_SIZE,
         captions: dict[str, str] | None = None) -> np.ndarray:
  """Rows = examples, columns = ``columns`` (normalised float images [B, H, W, C];
  in ``column_order``) -> one uint8 [H', W', C] picture with a header row of the
  column names (or their ``captions``). A segmentation's columns (``prediction``
  and ``truth`` label maps beside the ``image``) become :func:`segmentation_columns` first."""
  names = column_names(columns)
  headers = [(captions or {}).get(n, label(n)) for n in names]
  if "prediction" in columns:
    return _draw(headers, segmentation_columns(*(columns[k] for k in names), mean, std), min_size)
  return _draw(headers, [np.asarray(normalization.to_pixels(columns[k], mean, std))
                         for k in names], min_size)


SEGMENTATION = ("image", "prediction", "truth")


def column_names(columns: dict) -> list[str]:
  """The columns in drawing order."""
  return list(SEGMENTATION) if "prediction" in columns else sorted(columns, key=column_order)


def palette(num_classes: int) -> np.ndarray:
  """[num_classes, 3] float colours in [0, 1], far apart (golden-ratio hues)."""
  import colorsys
  return np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.85, 0.95) for i in range(num_classes)],
                  np.float32)


def segmentation_columns(image, prediction, truth, mean, std, ignore: int = 255,
                         alpha: float = 0.55) -> list[np.ndarray]:
  """[image | prediction | ground truth] in RGB [0, 1]: the label maps' class
  colours laid over the image (``alpha``); unlabeled pixels (``ignore``) show
  the image alone. Colours index classes consistently across columns and steps."""
  pixels = np.asarray(normalization.to_pixels(image, mean, std), np.float32)
  rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
  prediction, truth = np.asarray(prediction), np.asarray(truth)
  colours = palette(int(max(prediction.max(initial=0), np.where(truth == ignore, 0, truth).max(
      initial=0))) + 1)

  def overlay(labels):
    labelled = (labels != ignore)[..., None]
    tint = colours[np.where(labels == ignore, 0, labels)]
    return np.where(labelled, (1 - alpha) * rgb + alpha * tint, rgb)
  return [rgb, overlay(prediction), overlay(truth)]


def _draw(headers, cols, min_size: int) -> np.ndarray:
  cols = [upscale(c, min_size) for c in cols]
  b, h, w, c = cols[0].shape
  top = HEADER + PAD
  out = np.ones((top + b * (h + PAD), PAD + len(cols) * (w + PAD), c), np.float32)
  for j, col in enumerate(cols):
    x = PAD + j * (w + PAD)
    for i in range(b):
      y = top + i * (h + PAD)
      out[y:y + h, x:x + w] = col[i]
  pixels = (np.nan_to_num(out) * 255).round().astype(np.uint8)
  picture = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
  draw, font = ImageDraw.Draw(picture), _font()
  for j, text in enumerate(headers):
    left, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = PAD + j * (w + PAD) + max(0, (w - (right - left)) // 2)
    draw.text((x, max(0, (HEADER - bottom) // 2)), text, fill=0 if c == 1 else (0,) * c, font=font)
  drawn = np.asarray(picture)
  return drawn[..., None] if c == 1 else drawn
