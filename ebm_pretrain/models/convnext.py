"""ConvNeXt backbone (Liu et al. 2022, "A ConvNet for the 2020s").

Sizes by variant name (``"T"``, ``"S"``, ``"B"``, ``"L"``; ``"mu"``, ``"nano"`` and
``"pico"`` are ours, for tests and CPU demos: mu and nano have three stages, mu a
2x2 stem; pico is the smallest with timm's four stages, for the export tests). Parameter names
follow the official code (``downsample_layers_i``, ``stages_i/blocks_j/{dwconv,
norm, pwconv1, pwconv2, gamma}``, ``norm``). Features are the official head's
input: global average pooling, then LayerNorm.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ebm_pretrain.models.layers import DropPath, PatchConv, check_images, drop_path_rates

Dtype = Any

VARIANTS = {
    "mu": dict(depths=(1, 1, 1), dims=(16, 32, 64), stem=2),
    "nano": dict(depths=(2, 2, 2), dims=(32, 64, 128), stem=4),
    "pico": dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), stem=4),  # timm's 4-stage layout
    "T": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), stem=4),
    "S": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), stem=4),
    "B": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), stem=4),
    "L": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), stem=4),
}


def decode_variant(variant: str) -> dict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown ConvNeXt variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return VARIANTS[variant]


def total_stride(variant: str) -> int:
  cfg = decode_variant(variant)
  return cfg["stem"] * 2 ** (len(cfg["depths"]) - 1)


# The official fine-tuning code's 12 groups (ConvNeXt ``optim_factory.
# get_num_layer_for_convnext``): the stem is layer 0; the early stages and their
# downsampling layers 1..; the long second-to-last stage three blocks per layer;
# the last stage and its downsampling layer 12; the final norm and heads 13.
_MAX_LAYER = 12


def layer_id(path: str, variant: str) -> tuple[int, int]:
  """(layer index, number of layers) of a ConvNeXt parameter for layer-wise lr decay."""
  num_stages = len(decode_variant(variant)["depths"])
  long_stage = num_stages - 2
  m = re.match(r"downsample_layers_(\d+)/", path)
  if m:
    s = int(m.group(1))
    return (0 if s == 0 else s + 1 if s <= long_stage else _MAX_LAYER), _MAX_LAYER + 1
  m = re.match(r"stages_(\d+)/blocks_(\d+)/", path)
  if m:
    s, j = int(m.group(1)), int(m.group(2))
    if s < long_stage:
      return s + 1, _MAX_LAYER + 1
    if s == long_stage:
      return min(s + 1 + j // 3, _MAX_LAYER - 1), _MAX_LAYER + 1
    return _MAX_LAYER, _MAX_LAYER + 1
  return _MAX_LAYER + 1, _MAX_LAYER + 1


def _dense_init():
  return dict(kernel_init=nn.initializers.truncated_normal(0.02), bias_init=nn.initializers.zeros)


class ConvNeXtBlock(nn.Module):
  """Depthwise 7x7 conv -> LayerNorm -> 4x MLP (GELU) -> layer scale, residual."""
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    y = nn.Conv(d, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=d, name="dwconv",
                **_dense_init(), **kw)(x)
    y = nn.LayerNorm(epsilon=1e-6, name="norm", **kw)(y)
    y = nn.Dense(4 * d, name="pwconv1", **_dense_init(), **kw)(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(d, name="pwconv2", **_dense_init(), **kw)(y)
    gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (d,),
                       self.param_dtype)
    return x + DropPath(self.drop_path)(y * gamma.astype(self.dtype), deterministic)


class Downsample(nn.Module):
  """The stem (patchify conv, then LayerNorm) or a stage's LayerNorm + 2x2 conv."""
  dim: int
  patch: int
  stem: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = PatchConv(self.dim, self.patch, name="conv", **_dense_init(), **kw)
    norm = nn.LayerNorm(epsilon=1e-6, name="norm", **kw)
    return norm(conv(x)) if self.stem else conv(norm(x))


class Stage(nn.Module):
  rates: tuple[float, ...]
  layer_scale_init: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    for j, rate in enumerate(self.rates):
      x = ConvNeXtBlock(rate, self.layer_scale_init, self.dtype, self.param_dtype,
                        name=f"blocks_{j}")(x, deterministic)
    return x


class ConvNeXt(nn.Module):
  """ConvNeXt feature extractor: images [B, H, W, C] -> features [B, dims[-1]];
  ``pyramid=True``: each stage's output map [B, H/s, W/s, dims[i]], finest first."""
  variant: str = "T"
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, pyramid: bool = False):
    cfg = decode_variant(self.variant)
    check_images("ConvNeXt", self.variant, images, total_stride(self.variant))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    rates = drop_path_rates(self.drop_path, cfg["depths"])
    levels = []
    for s, dim in enumerate(cfg["dims"]):
      x = Downsample(dim, cfg["stem"] if s == 0 else 2, s == 0, name=f"downsample_layers_{s}",
                     **kw)(x)
      x = Stage(tuple(rates[s]), self.layer_scale_init, name=f"stages_{s}", **kw)(x, not train)
      levels.append(x)
    if pyramid:
      return levels
    x = jnp.mean(x, axis=(1, 2))
    return nn.LayerNorm(epsilon=1e-6, name="norm", **kw)(x)
