"""A pixel pretext task from outside the package, in one file (docs/extending.md):
bit-depth reduction. ``--config.task=quantize`` (``task_kwargs.levels``)."""
import jax.numpy as jnp

from ebm_pretrain import corruptions


def quantize(levels: int = 4, mean=corruptions.IMAGENET_MEAN, std=corruptions.IMAGENET_STD):
  """Each pixel rounded to one of ``levels`` grey levels (in [0, 1] pixel space)."""
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def corrupt(rng, images):
    pixels = jnp.clip(images * std + mean, 0.0, 1.0)
    q = jnp.round(pixels * (levels - 1)) / (levels - 1)
    return ((q - mean) / std).astype(images.dtype)
  return corrupt


corruptions.register("quantize", quantize, needs_norm=True)
