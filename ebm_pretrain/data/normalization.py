"""The one mapping between pixels and model space: ``(x / 255 - mean) / std`` and back."""
from __future__ import annotations

import jax.numpy as jnp


def normalize(images, mean, std):
  """uint8 [..., C] in [0, 255] (or float in [0, 1]) -> float32 model inputs."""
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def to_pixels(x, mean, std):
  """Model space -> float32 pixels in [0, 1] (clipped)."""
  return jnp.clip(x * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32), 0.0, 1.0)
