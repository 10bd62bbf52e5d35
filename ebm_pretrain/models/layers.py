"""Layers shared by the backbone families."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class DropPath(nn.Module):
  """Stochastic depth: drops the residual branch per example."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def drop_path_rates(rate: float, depths) -> list[list[float]]:
  """Per-stage lists of per-block rates, rising linearly from 0 to ``rate`` over all
  blocks (ConvNeXt, Swin: ``torch.linspace(0, drop_path_rate, sum(depths))``)."""
  rates = np.linspace(0.0, rate, sum(depths)).tolist()
  out, start = [], 0
  for d in depths:
    out.append(rates[start:start + d])
    start += d
  return out


def check_images(family: str, variant: str, images, stride: int) -> None:
  """Clear errors for a batch that is not [B, H, W, C], or whose size the
  network's downsampling cannot handle."""
  if images.ndim != 4:
    raise ValueError(f"{family} expects images [B, H, W, C], got shape {images.shape}")
  check_divisible(family, variant, images.shape[1:3], stride)


def check_divisible(family: str, variant: str, image_hw, stride: int) -> None:
  h, w = image_hw
  if h % stride or w % stride:
    raise ValueError(f"{family} {variant}: the image size {h}x{w} must be divisible by "
                     f"{stride} (its total downsampling); e.g. {max(stride, h // stride * stride)}")
