"""The baselines the paper compares against, as objectives of the same trainer:

* ``task=ae_<corruption>`` (e.g. ``ae_sr16``, ``ae_denoise``): an MAE-style
  asymmetric autoencoder: the ViT encoder sees the corrupted image, a light
  transformer decoder predicts the clean pixels of every patch (MSE).
* ``task=ae_sorting``: the encoder has no position embedding and sees the
  patches of the sorting task (edge masking, 50% patch dropout); the decoder,
  also without position embeddings, classifies each kept patch's position
  (cross-entropy). Fine-tuning adds trainable position embeddings from zeros.
* ``task=mae``: MAE (He et al. 2022): 75% of the patches masked at random, the
  encoder on the visible ones only, mask tokens and sin-cos position embeddings
  in the decoder, MSE on per-patch normalised pixels of the masked patches.

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

from ebm_pretrain import checkpoints, config_lib, corruptions, models, sorting
from ebm_pretrain.models import vit

AE_PREFIX, MAE, is_baseline = config_lib.AE_PREFIX, config_lib.MAE, config_lib.is_baseline


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
class _Autoencoder:
  """Shared: a ViT encoder (``config.model``) and a decoder (``config.decoder``)."""
  config: Any

  def __post_init__(self):
    c = self.config
    if c.model.name != "vit":
      raise config_lib.ConfigError(f"config.task={c.task}: the autoencoder baselines are "
                                   f"ViT-only (MAE's design), got model.name={c.model.name}")
    self.backbone = models.get_backbone("vit", c.model.variant, **config_lib.model_kwargs(c))
    dtypes = dict(dtype=config_lib.DTYPES[c.dtype], param_dtype=config_lib.DTYPES[c.param_dtype])
    self.patch = models.decode_variant(c.model.variant)["patch_size"]
    d = c.decoder
    self.decoder = Decoder(d.width, d.depth, d.num_heads, self.out_dim(),
                           posemb=self.decoder_posemb, **dtypes)

  decoder_posemb = True   # sin-cos position embeddings in the decoder
  keep_ratio = None       # the encoder sees all patches; else a random subset

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

  def init_model_state(self, rng, images):
    return {}

  def frozen(self, path: str) -> bool:
    return False

  def lr_multipliers(self, params):
    return None

  def init_from(self, params, path: str, log=print):
    backbone = checkpoints.pretrained_backbone(self.config, params["model"]["backbone"], path,
                                               log)
    return {"model": dict(params["model"], backbone=backbone)}

  def loss(self, params, model_state, batch, rng):
    k_task, k_drop = jax.random.split(rng)
    per_example = self.per_example_loss(params["model"], batch["image"], k_task, True, k_drop)
    w = batch["valid"].astype(jnp.float32)
    return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1.0), ({}, model_state)

  def eval_sums(self, params, model_state, batch, rng):
    per_example = self.per_example_loss(params["model"], batch["image"], rng, False, None)
    w = batch["valid"].astype(jnp.float32)
    return {"loss": jnp.sum(w * per_example), "count": jnp.sum(w)}

  def eval_summary(self, totals: dict[str, float]) -> dict[str, float]:
    return {"eval/loss": totals["loss"] / max(totals.get("count", 0.0), 1.0)}


class PixelAutoencoder(_Autoencoder):
  """``ae_<corruption>``: corrupted image in, clean pixels of every patch out."""

  def __post_init__(self):
    super().__post_init__()
    self.corrupt = corruptions.from_spec(
        self.config.task[len(AE_PREFIX):], mean=tuple(self.config.data.mean),
        std=tuple(self.config.data.std), **self.config.task_kwargs.to_dict())

  def per_example_loss(self, params, images, rng, train, drop_rng):
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

  def out_dim(self) -> int:
    gh = self.config.data.image_size // self.patch
    return gh * gh

  def per_example_loss(self, params, images, rng, train, drop_rng):
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
    self.keep_ratio = 1.0 - self.config.task_kwargs.get("mask_ratio", 0.75)
    super().__post_init__()

  def per_example_loss(self, params, images, rng, train, drop_rng):
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


def get(config):
  if config.task == MAE:
    return MAEObjective(config)
  if config.task == AE_PREFIX + config_lib.SORTING:
    return SortingAutoencoder(config)
  return PixelAutoencoder(config)
