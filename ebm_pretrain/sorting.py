"""Patch sorting (paper §2.4, Eq. 7, appendix A.2): the corruption shuffles the
fixed 2D sin-cos position embeddings among an image's patches, and N energy
steps on the embeddings (not the pixels) sort them back.

Two regularisers keep the network from sorting by edge pixels alone: each patch
loses its k outermost pixels (k = 1 or 2, probability 0.5 each, per patch)
before the patch embedding, and half of the patch tokens are dropped before the
transformer layers. The cls token has no position embedding in this ViT, so it
stays in place.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Appendix A.2's regularisers, the defaults of ``config.task_kwargs`` for
# ``task=sorting`` and ``task=ae_sorting``.
DEFAULTS = dict(keep_ratio=0.5, edge_mask=True)


def settings(task_kwargs) -> dict:
  """The regularisers' settings: ``task_kwargs`` over :data:`DEFAULTS`."""
  return dict(DEFAULTS, **task_kwargs)


def edge_mask(rng, images: Array, patch: int, fill: float = 0.0) -> Array:
  """Zeroes (sets to ``fill``) the k outermost pixels of every ``patch`` x
  ``patch`` patch, k drawn per patch from {1, 2} with probability 0.5 each."""
  b, h, w, _ = images.shape
  gh, gw = h // patch, w // patch
  k = jax.random.randint(rng, (b, gh, gw), 1, 3)
  i = jnp.arange(patch)
  depth = jnp.minimum(i, patch - 1 - i)                  # distance to the nearest edge
  ring = jnp.minimum(depth[:, None], depth[None, :])     # [p, p]: 0 on the border
  ring = jnp.tile(ring, (gh, gw))                        # [h, w]
  k_pixels = jnp.repeat(jnp.repeat(k, patch, axis=1), patch, axis=2)  # [b, h, w]
  return jnp.where((ring[None] < k_pixels)[..., None], jnp.asarray(fill, images.dtype), images)


def permutations(rng, batch: int, n: int) -> Array:
  """[batch, n]: an independent random permutation of range(n) per example."""
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(rng, batch))


def keep_indices(rng, batch: int, n: int, keep_ratio: float = 0.5) -> Array:
  """[batch, round(n * keep_ratio)]: a random subset of the n token positions per
  example (patch dropout), in random order."""
  keep = max(1, int(round(n * keep_ratio)))
  return jnp.argsort(jax.random.uniform(rng, (batch, n)), axis=1)[:, :keep]


def regularise(rng, images: Array, patch: int, keep_ratio: float = 0.5,
               edge_masking: bool = True) -> tuple[Array, Array]:
  """Appendix A.2's regularisers: (edge-masked images, kept token indices [B, K])."""
  k_edge, k_keep = jax.random.split(rng)
  if edge_masking:
    images = edge_mask(k_edge, images, patch)
  n = (images.shape[1] // patch) * (images.shape[2] // patch)
  return images, keep_indices(k_keep, images.shape[0], n, keep_ratio)


def shuffled_posemb(rng, posemb: Array, keep: Array) -> tuple[Array, Array]:
  """(shuffled, true) embeddings [B, K, D] of the kept tokens: ``true`` is each
  kept token's own sin-cos embedding, ``shuffled`` the one the per-example
  permutation of all N positions gave it."""
  n = posemb.shape[0]
  perm = permutations(rng, keep.shape[0], n)
  true = posemb[keep]
  shuffled = posemb[jnp.take_along_axis(perm, keep, axis=1)]
  return shuffled, true


def place_patches(images: Array, patch: int, keep: Array, positions: Array) -> Array:
  """Images [B, H, W, C] drawn from their kept patches (token indices ``keep``
  [B, K]) put at ``positions`` [B, K] of the patch grid; every other position is
  0 (the data mean in normalised space). Two patches sent to one position: the
  later one shows."""
  b, h, w, c = images.shape
  gh, gw = h // patch, w // patch
  tiles = images[:, :gh * patch, :gw * patch].reshape(b, gh, patch, gw, patch, c)
  tiles = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, patch, patch, c)
  kept = jnp.take_along_axis(tiles, keep[:, :, None, None, None], axis=1)
  canvas = jax.vmap(lambda t, i, v: t.at[i].set(v))(jnp.zeros_like(tiles), positions, kept)
  canvas = canvas.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return canvas.reshape(b, gh * patch, gw * patch, c)


def sorted_fraction(pred: Array, posemb: Array, true_index: Array) -> Array:
  """[B]: the fraction of tokens whose embedding is nearest (L2) to their own
  position's, among all N positions."""
  d = jnp.sum((pred[:, :, None, :] - posemb[None, None]) ** 2, axis=-1)  # [B, K, N]
  return jnp.mean(jnp.argmin(d, axis=-1) == true_index, axis=1)
