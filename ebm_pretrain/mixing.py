"""Mixup and CutMix on device, with label smoothing (timm's ``Mixup``, batch mode).

Per batch, with probability ``switch_prob`` CutMix (a box pasted from the
batch flipped end to end, lambda corrected to the pasted area), else Mixup
(a convex blend with the flipped batch). Targets are the smoothed one-hots
blended with the same lambda, so each row sums to one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels, num_classes: int, smoothing: float):
  """Integer labels [B] -> smoothed one-hot targets [B, num_classes] (rows sum to 1)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(rng, lam, height: int, width: int):
  """A box covering ~(1 - lam) of the image, centred uniformly at random
  (clipped to the image); returns a [H, W] float mask (1 inside) and the lambda
  corrected to the clipped area."""
  ky, kx = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = jnp.round(height * cut), jnp.round(width * cut)
  cy = jax.random.randint(ky, (), 0, height).astype(jnp.float32)
  cx = jax.random.randint(kx, (), 0, width).astype(jnp.float32)
  y0, y1 = jnp.clip(cy - ch // 2, 0, height), jnp.clip(cy + ch // 2, 0, height)
  x0, x1 = jnp.clip(cx - cw // 2, 0, width), jnp.clip(cx + cw // 2, 0, width)
  ys = jnp.arange(height, dtype=jnp.float32)[:, None]
  xs = jnp.arange(width, dtype=jnp.float32)[None, :]
  box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).astype(jnp.float32)
  return box, 1.0 - jnp.mean(box)


def mixup_cutmix(rng, images, labels, *, num_classes: int, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0,
                 smoothing: float = 0.1):
  """images [B, H, W, C] float, labels [B] int -> (mixed images, targets [B, K], lam)."""
  targets = smooth_labels(labels, num_classes, smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets, jnp.ones(())
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
  if mixup_alpha <= 0:
    use_cutmix = jnp.array(True)
  elif cutmix_alpha <= 0:
    use_cutmix = jnp.array(False)
  else:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  box, lam_box = cutmix_box(k_box, lam_cut, images.shape[1], images.shape[2])
  lam = jnp.where(use_cutmix, lam_box, lam_mix)
  lam = jnp.where(jax.random.uniform(k_apply) < prob, lam, 1.0).astype(jnp.float32)
  flipped = images[::-1]
  mask = jnp.where(use_cutmix, box, 1.0 - lam)[None, :, :, None]  # weight of the flipped batch
  mask = jnp.where(lam == 1.0, 0.0, mask)
  mixed = images * (1.0 - mask) + flipped * mask
  return mixed.astype(images.dtype), lam * targets + (1.0 - lam) * targets[::-1], lam
