"""Layers shared by the backbone families."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class PatchConv(nn.Module):
  """``nn.Conv(features, (p, p), strides=(p, p), padding="VALID")`` computed as one
  matmul over non-overlapping patches: the same parameters (``kernel`` [p, p, C,
  features], ``bias``), initialisation and output, so checkpoints are
  interchangeable. Why: the energy objective differentiates the patch embedding
  w.r.t. its input and then again w.r.t. the kernel, and XLA:CPU runs those
  convolutions (lhs-dilated, then a kernel gradient of that) far below its
  matmul speed (measured: docs/performance.md)."""
  features: int
  patch: int
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch
    *batch, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (p, p, c, self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    gh, gw = h // p, w // p  # VALID: a remainder row/column of pixels is not used
    x = x[..., :gh * p, :gw * p, :].reshape(*batch, gh, p, gw, p, c)
    y = jnp.einsum("...hpwqc,pqcd->...hwd", x, kernel)
    return y if bias is None else y + bias


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
