"""The baselines the paper compares against, as objectives of the same trainer:

* ``objective=autoencoder`` (``:task=ae_<corruption>``, e.g. ``ae_sr16``): an
  MAE-style asymmetric autoencoder: the ViT encoder sees the image corrupted by
  ``config.task``, a light transformer decoder predicts the clean pixels of
  every patch (MSE).
* ``objective=ae_sorting``: the encoder has no position embedding and sees the
  patches of the sorting task (edge masking, 50% patch dropout); the decoder,
  also without position embeddings, classifies each kept patch's position
  (cross-entropy). Fine-tuning adds trainable position embeddings from zeros.
* ``objective=mae``: MAE (He et al. 2022): 75% of the patches masked at random,
  the encoder on the visible ones only, mask tokens and sin-cos position
  embeddings in the decoder, MSE on per-patch normalised pixels of the masked
  patches.

Parameters are ``{"model": {"backbone": ..., "decoder": ...}}``: fine-tuning
takes ``backbone`` as from an energy pretraining. The decoder drops the cls
token (MAE carries it through its decoder; nothing reads it there).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ebm_pretrain import models, sorting
from ebm_pretrain.corruptions import check_corruption, make_corruption
from ebm_pretrain.errors import fail
from ebm_pretrain.losses import weighted_mean
from ebm_pretrain.models import vit
from ebm_pretrain.objectives.base import DTYPES, Base, get_backbone
from ebm_pretrain.objectives.sorting import check_settings, set_defaults


def patchify(images, patch: int):
  """[B, H, W, C] -> [B, N, patch * patch * C], patches in the ViT's token order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), -1)


class Decoder(nn.Module):
  """MAE's light decoder: project, fill in mask tokens at the missing positions,
  add sin-cos position embeddings (optional), transformer blocks, predict."""
  width: int
  depth: int
  num_heads: int
  out_dim: int
  posemb: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, keep, grid):
    """tokens [B, K, D] of the positions ``keep`` [B, K] (None: all, in order) of
    a ``grid`` (gh, gw) -> predictions [B, N, out_dim] for every position."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Dense(self.width, name="decoder_embed", **kw)(tokens)
    n = grid[0] * grid[1]
    if keep is not None and keep.shape[1] < n:
      mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width),
                              self.param_dtype)
      full = jnp.broadcast_to(mask_token.astype(x.dtype), (x.shape[0], n, self.width))
      x = jax.vmap(lambda f, k, v: f.at[k].set(v))(full, keep, x)
    if self.posemb:
      x = x + vit.posemb_sincos_2d(grid[0], grid[1], self.width).astype(x.dtype)
    x = vit.Encoder(self.depth, 4 * self.width, self.num_heads, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="decoder")(x)
    return nn.Dense(self.out_dim, name="decoder_pred", **kw)(x).astype(jnp.float32)


@dataclasses.dataclass
class _Autoencoder(Base):
  """Shared: a ViT encoder (``config.model``) and a decoder (``config.decoder``)."""
  backbone_path = ("model", "backbone")
  decoder_posemb = True   # sin-cos position embeddings in the decoder
  keep_ratio = None       # the encoder sees all patches; else a random subset

  def __post_init__(self):
    c = self.config
    self.backbone = get_backbone(c)
    self.patch = models.decode_variant(c.model.variant)["patch_size"]
    d = c.decoder
    self.decoder = Decoder(d.width, d.depth, d.num_heads, self.out_dim(),
                           posemb=self.decoder_posemb, dtype=DTYPES[c.dtype],
                           param_dtype=DTYPES[c.param_dtype])

  @classmethod
  def defaults(cls, config) -> None:
    # A light decoder (MAE's for ViT-B/L: 512 wide, 8 deep); the task's options.
    config.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16))
    config.task_kwargs = ml_collections.ConfigDict()

  @classmethod
  def check(cls, config) -> None:
    if config.model.name != "vit":
      fail("objective", f"{config.objective}: the autoencoder baselines are ViT-only (MAE's "
           f"design), got model.name={config.model.name}")
    for f in ("width", "depth", "num_heads"):
      if config.decoder[f] < 1:
        fail(f"decoder.{f}", f"must be >= 1, got {config.decoder[f]}")
    if config.decoder.width % config.decoder.num_heads:
      fail("decoder.width", f"{config.decoder.width} is not divisible by decoder.num_heads")

  def out_dim(self) -> int:
    return self.patch * self.patch * self.config.data.channels

  def _apply(self, params, images, keep, train, rng):
    rngs = {"dropout": rng} if train else None
    tokens = self.backbone.apply({"params": params["backbone"]}, images, keep=keep, tokens=True,
                                 train=train, rngs=rngs)
    grid = self.backbone.patch_grid(images.shape[1:3])
    return self.decoder.apply({"params": params["decoder"]}, tokens, keep, grid)

  def init(self, rng, images):
    k1, k2 = jax.random.split(rng)
    backbone = self.backbone.init(k1, images)["params"]
    tokens = self.backbone.apply({"params": backbone}, images, tokens=True)
    grid = self.backbone.patch_grid(images.shape[1:3])
    keep = None
    if self.keep_ratio is not None:  # (the mask token exists only where tokens go missing)
      keep = sorting.keep_indices(k2, images.shape[0], grid[0] * grid[1], self.keep_ratio)
      tokens = tokens[:, :keep.shape[1]]
    decoder = self.decoder.init(k2, tokens, keep, grid)["params"]
    return {"model": {"backbone": backbone, "decoder": decoder}}

  def _per_example(self, params, images, rng, train, drop_rng):
    raise NotImplementedError

  def loss(self, params, model_state, batch, rng):
    k_task, k_drop = jax.random.split(rng)
    per_example = self._per_example(params["model"], batch["image"], k_task, True, k_drop)
    return weighted_mean(per_example, batch["valid"].astype(jnp.float32)), ({}, model_state)

  def per_example_loss(self, params, model_state, batch, rng):
    """[B]: the loss of each example in eval mode (the ``loss`` evaluator)."""
    return self._per_example(params["model"], batch["image"], rng, False, None)

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"loss": dict(type="loss")}


class PixelAutoencoder(_Autoencoder):
  """``autoencoder``: image corrupted by ``config.task`` in, clean pixels of every patch out."""

  def __post_init__(self):
    super().__post_init__()
    self.corrupt = make_corruption(self.config)

  @classmethod
  def defaults(cls, config) -> None:
    super().defaults(config)
    config.task = ""              # the corruption of the input

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    check_corruption(config)

  def _per_example(self, params, images, rng, train, drop_rng):
    pred = self._apply(params, self.corrupt(rng, images), None, train, drop_rng)
    return jnp.mean((pred - patchify(images, self.patch)) ** 2, axis=(1, 2))


class SortingAutoencoder(_Autoencoder):
  """``ae_sorting``: classify each kept patch's position, without any position
  embedding in encoder or decoder."""
  decoder_posemb = False

  def __post_init__(self):
    self.kwargs = sorting.settings(self.config.task_kwargs)
    self.keep_ratio = self.kwargs["keep_ratio"]
    super().__post_init__()

  @classmethod
  def defaults(cls, config) -> None:
    super().defaults(config)
    set_defaults(config, posemb="none")  # no position embedding anywhere

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    check_settings(config)
    if config.model.get("posemb") != "none":
      fail("model.posemb", "ae_sorting's encoder has no position embedding (posemb=none), "
           f"got {config.model.posemb!r}")

  def out_dim(self) -> int:
    gh = self.config.data.image_size // self.patch
    return gh * gh

  def _per_example(self, params, images, rng, train, drop_rng):
    images, keep = sorting.regularise(rng, images, self.patch, self.keep_ratio,
                                      self.kwargs["edge_mask"])
    logits = self._apply(params, images, keep, train, drop_rng)  # [B, N, N]
    logits = jnp.take_along_axis(logits, keep[:, :, None], axis=1)  # the kept tokens
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, keep[:, :, None], axis=2)[..., 0], axis=1)


class MAEObjective(_Autoencoder):
  """MAE: 75% masked, the encoder on the visible patches, MSE of per-patch
  normalised pixels on the masked ones."""

  def __post_init__(self):
    self.keep_ratio = 1.0 - self.config.task_kwargs.mask_ratio
    super().__post_init__()

  @classmethod
  def defaults(cls, config) -> None:
    super().defaults(config)
    config.task_kwargs = ml_collections.ConfigDict(dict(mask_ratio=0.75))

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    if not 0 < config.task_kwargs.get("mask_ratio", -1) < 1:
      fail("task_kwargs.mask_ratio", f"must be in (0, 1), got "
           f"{config.task_kwargs.get('mask_ratio')}")

  def _per_example(self, params, images, rng, train, drop_rng):
    gh, gw = self.backbone.patch_grid(images.shape[1:3])
    keep = sorting.keep_indices(rng, images.shape[0], gh * gw, self.keep_ratio)
    pred = self._apply(params, images, keep, train, drop_rng)
    return mae_loss(pred, patchify(images, self.patch), keep)


def mae_loss(pred, patches, keep):
  """[B]: MSE between the predictions [B, N, P] and the per-patch normalised
  pixels (MAE's norm_pix_loss) of the patches not in ``keep`` [B, K]."""
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  var = jnp.var(patches, axis=-1, keepdims=True)
  target = (patches - mean) / jnp.sqrt(var + 1e-6)
  b, n = patches.shape[:2]
  masked = jnp.ones((b, n)).at[jnp.arange(b)[:, None], keep].set(0.0)
  err = jnp.mean((pred - target) ** 2, axis=-1)
  return jnp.sum(err * masked, axis=1) / jnp.sum(masked, axis=1)
