"""The loss helpers every objective shares: the per-pixel restoration error
(SmoothL1 or MSE) and the weighted mean over a batch whose padding and
undecodable images weigh 0."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LOSSES = ("smooth_l1", "mse")


def compute_dtype(dtype) -> jnp.dtype:
  """At least float32: bf16 compute never reaches the restored images or the loss."""
  return jnp.result_type(dtype, jnp.float32)


def pixel_error(pred: Array, target: Array, loss: str = "smooth_l1",
                weights: Array | None = None) -> Array:
  """Mean elementwise error. SmoothL1 uses beta=1 (Listing 1); MSE is Eq. 5.

  ``weights`` [B] (e.g. 0 for an undecodable image) weight the per-example means.
  """
  dtype = compute_dtype(jnp.result_type(pred, target))
  diff = pred.astype(dtype) - target.astype(dtype)
  if loss == "smooth_l1":
    absd = jnp.abs(diff)
    err = jnp.where(absd < 1.0, 0.5 * diff * diff, absd - 0.5)
  elif loss == "mse":
    err = diff * diff
  else:
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
  if weights is None:
    return jnp.mean(err)
  per_example = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  return weighted_mean(per_example, weights.astype(dtype))


def weighted_mean(x: Array, w: Array) -> Array:
  """Mean of ``x`` [B] over the examples with weight ``w`` [B] (0 for padding)."""
  return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1.0)
