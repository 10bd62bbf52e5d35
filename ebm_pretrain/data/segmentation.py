"""Segmentation examples: an image and its label map travel together through
every geometric augmentation (issue 17; the objective and the evaluator build on
this).

Training follows mmsegmentation's ADE20K pipeline (BEiT / MAE use it for
UperNet): random rescale by a ratio in (0.5, 2.0) of a base scale (ADE20K:
2048 x 512, i.e. 4x and 1x the crop), a random ``size`` x ``size`` crop that
retries (up to 10 times) while one class fills more than ``cat_max_ratio`` of
it, a horizontal flip, photometric distortion (brightness, contrast, and for
colour images saturation), and padding to the crop size. The image is
resampled bilinearly, the label map with nearest neighbour only: a label is a
class index, and interpolating it would invent classes at every boundary.
Padding and "unlabeled" pixels carry ``IGNORE`` (255), which the loss and the
mIoU skip.

``GarmentScenes`` is the offline demo dataset: Fashion-MNIST garments
composited at random positions and scales onto textured backgrounds, with their
per-pixel class masks (0: background, 1-10: the garment classes).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
from PIL import Image

from ebm_pretrain.data.image import decode_image, decode_label_map
from ebm_pretrain.errors import fail

IGNORE = 255


@dataclasses.dataclass(frozen=True)
class SegAugment:
  ratio_range: tuple[float, float] = (0.5, 2.0)
  base_aspect: float = 4.0          # the base scale is (base_aspect x size, size): ADE20K 2048 x 512
  cat_max_ratio: float = 0.75
  flip: bool = True
  photometric: bool = True

  @classmethod
  def from_config(cls, a) -> "SegAugment":
    """From ``config.augment``: its ``seg`` block and the shared ``flip``."""
    return cls(ratio_range=tuple(a.seg.ratio_range), base_aspect=a.seg.base_aspect,
               cat_max_ratio=a.seg.cat_max_ratio, flip=a.flip, photometric=a.seg.photometric)

  def check(self) -> None:
    """Raises ConfigError naming the ``augment.seg`` field that cannot work."""
    lo, hi = self.ratio_range
    if not 0 < lo <= hi:
      fail("augment.seg.ratio_range", f"must be 0 < low <= high, got {self.ratio_range}")
    if self.base_aspect < 1:
      fail("augment.seg.base_aspect", f"must be >= 1 (long side / crop), got {self.base_aspect}")
    if not 0 < self.cat_max_ratio <= 1:
      fail("augment.seg.cat_max_ratio", f"must be in (0, 1] (1: no retries), "
           f"got {self.cat_max_ratio}")


def _resize_pair(image: np.ndarray, mask: np.ndarray, hw: tuple[int, int]):
  """Bilinear for the image, nearest for the labels."""
  h, w = hw
  squeeze = image.shape[-1] == 1
  im = Image.fromarray(image[..., 0] if squeeze else image).resize((w, h), Image.BILINEAR)
  image = np.asarray(im)[..., None] if squeeze else np.asarray(im)
  mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
  return image, mask


def rescale_to(image: np.ndarray, mask: np.ndarray, long_side: float, short_side: float):
  """mmsegmentation's keep-ratio Resize: the largest scale at which the long side
  is at most ``long_side`` and the short side at most ``short_side``."""
  h, w = mask.shape
  scale = min(long_side / max(h, w), short_side / min(h, w))
  return _resize_pair(image, mask, (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))))


def random_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator,
                cat_max_ratio: float = 1.0):
  """A ``size`` x ``size`` crop (smaller where the image is), the same box for both;
  retried up to 10 times while one labelled class covers more than
  ``cat_max_ratio`` of the crop (mmsegmentation's RandomCrop)."""
  h, w = mask.shape
  ch, cw = min(size, h), min(size, w)
  for _ in range(10):
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = mask[top:top + ch, left:left + cw]
    _, counts = np.unique(crop[crop != IGNORE], return_counts=True)
    if cat_max_ratio >= 1 or len(counts) < 2 or counts.max() / counts.sum() < cat_max_ratio:
      break
  return image[top:top + ch, left:left + cw], crop


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness (±32), contrast (×0.5-1.5), then for colour images saturation
  (×0.5-1.5), each with probability ½ (mmsegmentation's PhotoMetricDistortion
  without the hue shift). The label map is never touched."""
  x = image.astype(np.float32)
  if rng.uniform() < 0.5:
    x = x + rng.uniform(-32, 32)
  if rng.uniform() < 0.5:
    x = x * rng.uniform(0.5, 1.5)
  if x.shape[-1] == 3 and rng.uniform() < 0.5:
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = gray[..., None] + (x - gray[..., None]) * rng.uniform(0.5, 1.5)
  return np.clip(x, 0, 255).astype(np.uint8)


def pad_to(image: np.ndarray, mask: np.ndarray, size: int):
  """Pads bottom/right to ``size`` x ``size``: 0 for the image, IGNORE for the labels."""
  h, w = mask.shape
  ph, pw = size - h, size - w
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
  return image, np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE)


def decode_mask(mask, reduce_zero_label: bool = False) -> np.ndarray:
  """bytes (PNG) or array -> uint8 [H, W]; ``reduce_zero_label`` (ADE20K) maps
  class 0 ("other") to IGNORE and every other class c to c - 1."""
  arr = decode_label_map(mask) if isinstance(mask, (bytes, bytearray)) else np.asarray(mask)
  if arr.ndim == 3:
    arr = arr[..., 0]
  arr = arr.astype(np.uint8)
  if reduce_zero_label:
    arr = np.where(arr == 0, IGNORE, arr.astype(np.int32) - 1).astype(np.uint8)
  return arr


def augment_pair(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator,
                 augment: SegAugment = SegAugment()):
  """The training transform: rescale, crop, flip, photometric, pad."""
  if image.shape[:2] != mask.shape:
    raise ValueError(f"image {image.shape[:2]} and label map {mask.shape} differ in size")
  r = rng.uniform(*augment.ratio_range)
  image, mask = rescale_to(image, mask, augment.base_aspect * size * r, size * r)
  image, mask = random_crop(image, mask, size, rng, augment.cat_max_ratio)
  if augment.flip and rng.uniform() < 0.5:
    image, mask = image[:, ::-1], mask[:, ::-1]
  if augment.photometric:
    image = photometric_distortion(image, rng)
  image, mask = pad_to(image, mask, size)
  return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _texture(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
  """A background: a few random sinusoidal gratings plus noise, uint8."""
  y, x = np.mgrid[:size, :size].astype(np.float32) / size
  out = np.zeros((size, size, channels), np.float32)
  for c in range(channels):
    for _ in range(3):
      f, theta, phase = rng.uniform(1, 8), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
      out[..., c] += np.sin(2 * np.pi * f * (x * np.cos(theta) + y * np.sin(theta)) + phase)
  out = 100 + 30 * out + rng.normal(0, 10, out.shape)
  return np.clip(out, 0, 255).astype(np.uint8)


class GarmentScenes:
  """``len`` scenes, each ``size`` x ``size``, built deterministically from its
  index and ``seed``: a textured background and 1-3 garments from ``garments``
  (a source of ``{"image", "label"}``, e.g. Fashion-MNIST) resized to a side of
  ``scale`` (a range, as a fraction of the scene's) and placed at random; a
  garment's pixels brighter than ``threshold`` are its silhouette (label + 1),
  later garments occlude earlier ones."""
  num_classes = 11

  def __init__(self, garments: Sequence[dict], length: int, size: int = 64, channels: int = 1,
               seed: int = 0, threshold: int = 30, scale: tuple[float, float] = (0.35, 0.7)):
    self.garments, self.length, self.size = garments, length, size
    self.channels, self.seed, self.threshold, self.scale = channels, seed, threshold, scale

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> dict:
    if not 0 <= i < self.length:
      raise IndexError(i)
    rng = np.random.default_rng([self.seed, i])
    image = _texture(rng, self.size, self.channels)
    mask = np.zeros((self.size, self.size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
      g = self.garments[int(rng.integers(len(self.garments)))]
      pixels = decode_image(g["image"], 1)[..., 0]
      side = min(self.size, max(1, int(round(self.size * rng.uniform(*self.scale)))))
      pixels = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BILINEAR))
      top, left = (int(rng.integers(0, self.size - side + 1)) for _ in range(2))
      shape = pixels > self.threshold
      region = (slice(top, top + side), slice(left, left + side))
      tint = rng.uniform(0.6, 1.0, self.channels) if self.channels > 1 else np.ones(1)
      image[region][shape] = (pixels[shape, None] * tint).astype(np.uint8)
      mask[region][shape] = int(g["label"]) + 1
    return {"image": image, "segmentation": mask}


def decode_augment_segmentation(element: dict, *, image_size: int, channels: int, train: bool,
                                rng: np.random.Generator,
                                augment: SegAugment | None = None) -> dict:
  """``{"image", "segmentation"}`` -> ``{"image", "mask", "label", "valid"}``.
  Training: :func:`augment_pair`. Evaluation: the image resized to fit the
  ``image_size`` square, keeping its aspect ratio, and padded (unlabeled)."""
  try:
    image = decode_image(element["image"], channels)
    mask = decode_mask(element["segmentation"])
    if train:
      image, mask = augment_pair(image, mask, image_size, rng, augment or SegAugment())
    else:
      if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {mask.shape} differ in size")
      image, mask = pad_to(*rescale_to(image, mask, image_size, image_size), image_size)
    valid = True
  except Exception as e:  # corrupt or unreadable: skip and count, never crash
    logging.warning("skipping an undecodable example: %s", e)
    image, mask = blank(image_size, channels)
    valid = False
  return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask),
          "label": np.int32(-1), "valid": np.bool_(valid)}


def blank(image_size: int, channels: int):
  """A padding example's image and (all unlabeled) label map."""
  return (np.zeros((image_size, image_size, channels), np.uint8),
          np.full((image_size, image_size), IGNORE, np.uint8))


class SceneParse:
  """TFDS ``scene_parse150`` (ADE20K, 150 classes) as ``{"image", "segmentation"}``
  with mmsegmentation's ``reduce_zero_label``: "other" (0) is unlabeled."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    e = self.source[i]
    return {"image": e["image"], "segmentation": decode_mask(e["annotation"],
                                                             reduce_zero_label=True)}
