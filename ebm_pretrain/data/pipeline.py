"""The grain input pipeline: shard -> shuffle -> repeat -> decode/augment -> batch -> prefetch.

Batches are host-local numpy dicts ``{"image": uint8 [b, H, W, C], "label": int32 [b],
"valid": bool [b]}`` (segmentation adds ``"mask": uint8 [b, H, W]``:
``data/segmentation.py``). Images stay uint8 until they are on the device (4x less
host->device traffic); the train step normalises them. An image that cannot be
decoded becomes an all-zero example with ``valid=False``: the loss ignores it
and the trainer counts and reports it, so a corrupt file never stops a run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from ebm_pretrain.data import randaug, segmentation
from ebm_pretrain.data.image import decode_image

# MAE's RandomResizedCrop: area scale (0.2, 1.0), aspect ratio (3/4, 4/3).
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def _resize(arr: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
  """Bicubic resize of (a box of) a uint8 image with Pillow."""
  squeeze = arr.shape[-1] == 1
  im = Image.fromarray(arr[..., 0] if squeeze else arr)
  out = np.asarray(im.resize((size[1], size[0]), Image.BICUBIC, box=box))
  return out[..., None] if squeeze else out


def random_resized_crop(arr: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = CROP_SCALE) -> np.ndarray:
  """torchvision's RandomResizedCrop (area ``scale``; MAE pretrains with (0.2, 1),
  fine-tunes with (0.08, 1)), then resized to size x size."""
  h, w = arr.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    cw = int(round(math.sqrt(target * ratio)))
    ch = int(round(math.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return _resize(arr, (size, size), box=(left, top, left + cw, top + ch))
  # Fallback: the central crop with the ratio clamped, as torchvision does.
  in_ratio = w / h
  if in_ratio < CROP_RATIO[0]:
    cw, ch = w, int(round(w / CROP_RATIO[0]))
  elif in_ratio > CROP_RATIO[1]:
    ch, cw = h, int(round(h * CROP_RATIO[1]))
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return _resize(arr, (size, size), box=(left, top, left + cw, top + ch))


def center_crop(arr: np.ndarray, size: int, resize_to: int) -> np.ndarray:
  """Resize the short side to ``resize_to``, then the central size x size crop."""
  h, w = arr.shape[:2]
  scale = resize_to / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  arr = _resize(arr, (nh, nw))
  top, left = (nh - size) // 2, (nw - size) // 2
  return arr[top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class Augment:
  """Training augmentation: RandomResizedCrop(crop_scale) + horizontal flip, then
  RandAugment when ``randaug`` = (num_ops, magnitude, magnitude_std)."""
  crop_scale: tuple[float, float] = CROP_SCALE
  flip: bool = True
  randaug: tuple[int, float, float] | None = None
  # Images with label maps: a data.segmentation.SegAugment (None: its defaults).
  segmentation: Any = None

  @classmethod
  def from_config(cls, a) -> "Augment":
    """From ``config.augment`` (crop_scale, flip, randaug_ops/_magnitude/_std, and
    for segmentation its ``seg`` block)."""
    randaug = (a.randaug_ops, a.randaug_magnitude, a.randaug_std) if a.randaug_ops else None
    seg = None
    if "seg" in a:
      seg = segmentation.SegAugment.from_config(a)
    return cls(crop_scale=tuple(a.crop_scale), flip=a.flip, randaug=randaug, segmentation=seg)


def decode_augment(element: dict, *, image_size: int, channels: int, train: bool,
                   rng: np.random.Generator, resize_to: int | None = None,
                   augment: Augment = Augment()) -> dict:
  if "segmentation" in element:  # an image with its label map: data/segmentation.py
    return segmentation.decode_augment_segmentation(
        element, image_size=image_size, channels=channels, train=train, rng=rng,
        augment=augment.segmentation)
  label = np.int32(element.get("label", -1))
  try:
    arr = decode_image(element["image"], channels)
    if train:
      arr = random_resized_crop(arr, image_size, rng, tuple(augment.crop_scale))
      if augment.flip and rng.uniform() < 0.5:
        arr = arr[:, ::-1]
      if augment.randaug:
        n, m, mstd = augment.randaug
        arr = randaug.rand_augment(np.ascontiguousarray(arr), rng, num_ops=int(n), magnitude=m,
                                   magnitude_std=mstd)
    else:
      arr = center_crop(arr, image_size, resize_to or image_size)
    valid = True
  except Exception as e:  # corrupt or unreadable: skip and count, never crash
    logging.warning("skipping an undecodable image: %s", e)
    arr = np.zeros((image_size, image_size, channels), np.uint8)
    valid = False
  return {"image": np.ascontiguousarray(arr), "label": label, "valid": np.bool_(valid)}


@dataclasses.dataclass
class _ProcessShard(grain.transforms.Map):
  """Local element i of this process -> its slot in the global example stream.

  The global stream is one shuffled, repeated order of the source, cut into
  global batches of ``global_batch``. Process p owns the contiguous slice
  [p*b, (p+1)*b) of every global batch (b = global_batch / process_count), reads
  only those records, and augments each with an rng keyed by its global slot.
  Hence any process layout assembles bit-identical global batches, in the same
  order, as a single process would.
  """
  source: Any
  order: Any  # MapDataset of source indices: the global stream
  global_batch: int
  process_index: int
  process_count: int
  seed: int
  image_size: int
  channels: int
  augment: Augment

  def map(self, i: int) -> dict:
    b = self.global_batch // self.process_count
    slot = (i // b) * self.global_batch + self.process_index * b + i % b
    element = self.source[int(self.order[slot])]
    return decode_augment(element, image_size=self.image_size, channels=self.channels,
                          train=True, rng=np.random.default_rng([self.seed, slot]),
                          augment=self.augment)


def make_train_dataset(source: Sequence[dict], *, global_batch: int, num_batches: int,
                       image_size: int, channels: int, seed: int, process_index: int = 0,
                       process_count: int = 1, num_workers: int = 0,
                       augment: Augment = Augment()) -> grain.IterDataset:
  """``num_batches`` process-local training batches of ``global_batch // process_count``."""
  if global_batch % process_count:
    raise ValueError(f"batch_size {global_batch} is not divisible by the number of "
                     f"processes {process_count}")
  n = len(source)
  if n < global_batch:
    raise ValueError(f"the source holds {n} examples, fewer than one batch of {global_batch}")
  epochs = math.ceil(num_batches * global_batch / n) + 1
  order = grain.MapDataset.range(n).seed(seed).shuffle().repeat(epochs)
  local_batch = global_batch // process_count
  ds = grain.MapDataset.range(num_batches * local_batch).map(_ProcessShard(
      source, order, global_batch, process_index, process_count, seed, image_size, channels,
      augment))
  return _prefetch(ds.batch(local_batch, drop_remainder=True).to_iter_dataset(), num_workers)


def _prefetch(it: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  """``it`` decoded in ``num_workers`` processes (0: in this one), same order."""
  if num_workers <= 0:
    return it
  # grain's workers read its absl flags, which only an absl app has parsed: an
  # in-process caller (the study, a notebook, a test) would stop on
  # UnparsedFlagAccessError. The defaults are what such a caller means.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


@dataclasses.dataclass
class _EvalDecode(grain.transforms.Map):
  image_size: int
  channels: int
  resize_to: int | None

  def map(self, element: dict) -> dict:
    return decode_augment(element, image_size=self.image_size, channels=self.channels,
                          train=False, rng=np.random.default_rng(0), resize_to=self.resize_to)


def make_eval_dataset(source: Sequence[dict], *, batch_size: int, image_size: int,
                      channels: int, resize_to: int | None = None, process_index: int = 0,
                      process_count: int = 1, num_examples: int | None = None,
                      num_workers: int = 0) -> grain.IterDataset:
  """One pass, in order, over this process's contiguous shard; the last batch is
  padded with ``valid=False`` examples so every batch has the same shape."""
  n = min(len(source), num_examples or len(source))
  per = math.ceil(n / process_count)
  lo, hi = process_index * per, min(n, (process_index + 1) * per)
  ds = grain.MapDataset.source(source)[lo:hi].map(_EvalDecode(image_size, channels, resize_to))
  # Every process yields the same number of batches (they run collectively).
  pad = max(1, math.ceil(per / batch_size)) * batch_size - len(ds)
  if pad:
    blank = {"image": np.zeros((image_size, image_size, channels), np.uint8),
             "label": np.int32(-1), "valid": np.bool_(False)}
    if len(ds) and "segmentation" in source[lo]:  # batches carry label maps (undecoded check)
      blank["mask"] = segmentation.blank(image_size, channels)[1]
    ds = grain.MapDataset.concatenate([ds, grain.MapDataset.source([blank] * pad)])
  return _prefetch(ds.batch(batch_size).to_iter_dataset(), num_workers)
