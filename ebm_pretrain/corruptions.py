"""Pixel pretext tasks (paper §3.1): each is a corruption ``(rng, images) -> corrupted``.

Images are float arrays [B, H, W, C] in the *normalised* space the model sees
(per-channel (x/255 − mean)/std). Every function is pure and jit-able, draws its
randomness per example, and returns the input's shape and dtype.

Masked pixels are set to ``MASK_FILL = 0``: the dataset mean in the normalised
space, so a masked region carries no brightness cue.

Tasks are found by name, e.g. ``get_corruption("sr", scale=16)`` or from a
spec string as used in configs, ``from_spec("sr16")``:

  mask_grid[G]        gridded masking, cell G px (16), ratio r (0.75)
  mask_random[_S]     random boxes, S in {small, large} (large)
  sr[S]               bicubic down by S, nearest up (16)
  denoise             √γ·x + √(1−γ)·ε, γ ~ U(0, 1)
  colorize            luma replicated over channels (RGB only)
  mixed               uniform per-example choice of the four above
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ebm_pretrain.errors import fail
from ebm_pretrain.registry import Registry

Array = jax.Array
Corruption = Callable[[Array, Array], Array]

MASK_FILL = 0.0
# ITU-R BT.601 luma weights (as PIL's "L" mode and torchvision's rgb_to_grayscale).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_BOX_PRESETS = {
    "small": dict(num_boxes=75, min_size=0.01, max_size=0.025),
    "large": dict(num_boxes=25, min_size=0.02, max_size=0.05),
}


def _check_images(images: Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"corruptions expect images [B, H, W, C], got shape {images.shape}")


def _per_example(fn, rng, images):
  """vmaps ``fn(key, image)`` over the batch with one independent key per example."""
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(fn)(keys, images)


# ----------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------
def mask_grid(cell: int = 16, ratio: float = 0.75) -> Corruption:
  """Splits the image into cell x cell squares (the last row/column may be cut
  off) and masks exactly round(ratio * num_cells) of them in every image."""
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"mask_grid: ratio must be in (0, 1), got {ratio}")
  if cell < 1:
    raise ValueError(f"mask_grid: cell must be >= 1, got {cell}")

  def corrupt(rng, images):
    _check_images(images)
    _, h, w, _ = images.shape
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    num_masked = round(ratio * gh * gw)

    def one(key, image):
      rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (gh * gw,))))
      cells = (rank < num_masked).reshape(gh, gw)
      mask = jnp.repeat(jnp.repeat(cells, cell, 0), cell, 1)[:h, :w, None]
      return jnp.where(mask, jnp.asarray(MASK_FILL, image.dtype), image)

    return _per_example(one, rng, images)
  return corrupt


def mask_random(num_boxes: int = 25, min_size: float = 0.02, max_size: float = 0.05,
                min_aspect: float = 0.5, max_aspect: float = 2.0) -> Corruption:
  """Masks ``num_boxes`` boxes per image. A box's area as a fraction of the image
  ("normalised size") is U(min_size, max_size), its aspect ratio h/w is
  U(min_aspect, max_aspect), its position uniform inside the image."""
  if not 0 < min_size <= max_size < 1:
    raise ValueError(f"mask_random: need 0 < min_size <= max_size < 1, got "
                     f"{min_size}, {max_size}")

  def corrupt(rng, images):
    _check_images(images)
    _, h, w, _ = images.shape

    def one(key, image):
      k_size, k_aspect, k_y, k_x = jax.random.split(key, 4)
      area = jax.random.uniform(k_size, (num_boxes,), minval=min_size, maxval=max_size)
      aspect = jax.random.uniform(k_aspect, (num_boxes,), minval=min_aspect, maxval=max_aspect)
      bh = jnp.clip(jnp.round(jnp.sqrt(area * aspect) * h), 1, h)
      bw = jnp.clip(jnp.round(jnp.sqrt(area / aspect) * w), 1, w)
      y0 = jnp.floor(jax.random.uniform(k_y, (num_boxes,)) * (h - bh + 1))
      x0 = jnp.floor(jax.random.uniform(k_x, (num_boxes,)) * (w - bw + 1))
      rows = jnp.arange(h)[None, :]
      cols = jnp.arange(w)[None, :]
      in_rows = ((rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])).astype(jnp.float32)
      in_cols = ((cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])).astype(jnp.float32)
      mask = (in_rows.T @ in_cols) > 0  # [H, W]: covered by at least one box
      return jnp.where(mask[:, :, None], jnp.asarray(MASK_FILL, image.dtype), image)

    return _per_example(one, rng, images)
  return corrupt


# ----------------------------------------------------------------------------
# Restoration tasks.
# ----------------------------------------------------------------------------
def super_resolution(scale: int = 16) -> Corruption:
  """Bicubic (antialiased) downsampling by ``scale``, nearest upsampling back."""
  if scale < 2:
    raise ValueError(f"sr: scale must be >= 2, got {scale}")

  def corrupt(rng, images):
    del rng  # deterministic
    _check_images(images)
    b, h, w, c = images.shape
    small = (b, max(1, round(h / scale)), max(1, round(w / scale)), c)
    low = jax.image.resize(images.astype(jnp.float32), small, "bicubic")
    return jax.image.resize(low, images.shape, "nearest").astype(images.dtype)
  return corrupt


def denoise() -> Corruption:
  """√γ·x + √(1−γ)·ε with γ ~ U(0, 1) per example and ε ~ N(0, I)."""
  def corrupt(rng, images):
    _check_images(images)
    k_gamma, k_noise = jax.random.split(rng)
    gamma = jax.random.uniform(k_gamma, (images.shape[0], 1, 1, 1), jnp.float32)
    noise = jax.random.normal(k_noise, images.shape, jnp.float32)
    out = jnp.sqrt(gamma) * images.astype(jnp.float32) + jnp.sqrt(1 - gamma) * noise
    return out.astype(images.dtype)
  return corrupt


def colorize(mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD) -> Corruption:
  """Replaces every channel by the image's luma. Luma is computed on the
  unnormalised colours (so ``mean``/``std`` must be the data normalisation) and
  then normalised again per channel: the output is gray in pixel space."""
  mean_a = jnp.asarray(mean, jnp.float32)
  std_a = jnp.asarray(std, jnp.float32)

  def corrupt(rng, images):
    del rng
    _check_images(images)
    if images.shape[-1] != 3:
      raise ValueError(f"colorize needs RGB images (3 channels); got "
                       f"{images.shape[-1]} channel(s)")
    rgb = images.astype(jnp.float32) * std_a + mean_a
    luma = rgb @ jnp.asarray(LUMA_WEIGHTS, jnp.float32)
    return ((luma[..., None] - mean_a) / std_a).astype(images.dtype)
  return corrupt


def mixed(mask: str = "mask_random_large", sr: str = "sr16",
          mean: Sequence[float] = IMAGENET_MEAN,
          std: Sequence[float] = IMAGENET_STD) -> Corruption:
  """Per example, a uniform choice among masking, SR, denoising and colorization
  (colorization is left out for 1-channel data). The paper's "Mixed" (§3.2)."""
  parts = [from_spec(mask), from_spec(sr), denoise()]
  color = colorize(mean, std)

  def corrupt(rng, images):
    _check_images(images)
    fns = parts + ([color] if images.shape[-1] == 3 else [])
    k_choice, *k_parts = jax.random.split(rng, len(fns) + 1)
    choice = jax.random.randint(k_choice, (images.shape[0],), 0, len(fns))
    out = jnp.zeros_like(images)
    for i, (fn, k) in enumerate(zip(fns, k_parts)):
      out = jnp.where((choice == i)[:, None, None, None], fn(k, images), out)
    return out
  return corrupt


# ----------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------
def _mask_random_preset(size: str = "large", **kw) -> Corruption:
  if size not in RANDOM_BOX_PRESETS:
    raise ValueError(f"mask_random: size must be one of {sorted(RANDOM_BOX_PRESETS)}, "
                     f"got {size!r}")
  return mask_random(**{**RANDOM_BOX_PRESETS[size], **kw})


CORRUPTIONS = Registry("task", {
    "mask_grid": mask_grid,
    "mask_random": _mask_random_preset,
    "sr": super_resolution,
    "denoise": denoise,
    "colorize": colorize,
    "mixed": mixed,
}, kind="task")
# Which corruptions use the data normalisation (they get mean/std passed in).
_NEEDS_NORM = {"colorize", "mixed"}


def register(name: str, factory: Callable[..., Corruption], *, needs_norm: bool = False) -> None:
  """Makes ``config.task = name`` (and ``:task=name``) use ``factory(**task_kwargs)``;
  ``needs_norm``: it also gets the data's ``mean`` and ``std``."""
  CORRUPTIONS.register(name, factory)
  if needs_norm:
    _NEEDS_NORM.add(name)


def get_corruption(name: str, **kwargs) -> Corruption:
  factory = CORRUPTIONS.get(name)  # (ConfigError, a ValueError, naming the valid ones)
  if name not in _NEEDS_NORM:
    kwargs.pop("mean", None)
    kwargs.pop("std", None)
  return factory(**kwargs)


def parse_spec(spec: str) -> tuple[str, dict]:
  """``"sr16"`` -> ("sr", {"scale": 16}); ``"mask_grid32"`` -> ("mask_grid",
  {"cell": 32}); ``"mask_random_small"`` -> ("mask_random", {"size": "small"})."""
  if spec in CORRUPTIONS:
    return spec, {}
  m = re.fullmatch(r"(sr)(\d+)|(mask_grid)(\d+)|(mask_random)_(small|large)", spec)
  if m is None:
    raise ValueError(f"unknown task {spec!r}; valid: {', '.join(CORRUPTIONS.names())} "
                     "(with forms like sr16, mask_grid32, mask_random_small)")
  if m.group(1):
    return "sr", {"scale": int(m.group(2))}
  if m.group(3):
    return "mask_grid", {"cell": int(m.group(4))}
  return "mask_random", {"size": m.group(6)}


def from_spec(spec: str, **kwargs) -> Corruption:
  name, parsed = parse_spec(spec)
  return get_corruption(name, **{**parsed, **kwargs})


def make_corruption(config) -> Corruption:
  """The corruption ``config.task`` (with ``task_kwargs``) names, for this data."""
  return from_spec(config.task, mean=tuple(config.data.mean), std=tuple(config.data.std),
                   **config.task_kwargs.to_dict())


def check_corruption(config, field: str = "task") -> None:
  """ConfigError unless ``config.task`` (with ``task_kwargs``) is a corruption of this data."""
  ratio = config.task_kwargs.get("ratio", None)
  if ratio is not None and not 0 < ratio < 1:
    fail("task_kwargs.ratio", f"must be in (0, 1), got {ratio}")
  try:
    parse_spec(config.task)
    make_corruption(config)
  except (ValueError, TypeError) as e:
    fail(field, f"{e} (or an objective's short name: sorting, ae_<task>, mae)")
  if config.task == "colorize" and config.data.channels != 3:
    fail(field, f"colorize needs 3-channel data; data.channels={config.data.channels}")
