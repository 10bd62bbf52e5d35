"""Vision Transformer backbone, after big_vision's ``models/vit.py``.

Sizes come from a variant string such as ``"S/16"``. Parameter names follow the
original ViT checkpoints (``embedding``, ``cls``, ``pos_embedding``,
``Transformer/encoderblock_i/...``, ``Transformer/encoder_norm``). ``dtype`` is
the compute dtype, ``param_dtype`` the storage dtype of the weights.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ebm_pretrain.errors import CheckpointError, fail
from ebm_pretrain.models.layers import DropPath, PatchConv

Dtype = Any

# width, depth, mlp_dim, num_heads (Dosovitskiy et al. 2021; Ti from DeiT).
# "mu" and "nano" are ours: sizes for tests and CPU demos.
VARIANTS = {
    "mu": dict(width=32, depth=2, mlp_dim=64, num_heads=2),
    "nano": dict(width=128, depth=4, mlp_dim=512, num_heads=4),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}


def decode_variant(variant: str) -> dict:
  """``"S/16"`` -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in VARIANTS:
    raise ValueError(f"unknown ViT variant {variant!r}; expected NAME/PATCH with "
                     f"NAME in {sorted(VARIANTS)}, e.g. 'S/16'")
  return dict(VARIANTS[m.group(1)], patch_size=int(m.group(2)))


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.,
                     dtype=jnp.float32) -> jax.Array:
  """Fixed 2D sin-cos position embedding (MoCo v3 / MAE), shape [1, h*w, width]."""
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs width % 4 == 0, got {width}")
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None]


POSEMBS = ("learn", "sincos2d", "sincos2d_learn", "none", "zeros_learn")


def check_options(variant: str, image_size: int, *, pool="tok", posemb="learn", remat="none",
                  **_) -> None:
  """ConfigError naming the ``config.model`` field this ViT cannot take."""
  try:
    patch = decode_variant(variant)["patch_size"]
  except ValueError as e:
    fail("model.variant", str(e))
  if image_size % patch:
    fail("model.variant",
         f"patch size {patch} does not divide data.image_size={image_size}")
  if pool not in ("tok", "gap"):
    fail("model.pool", f"{pool!r}; valid: tok, gap")
  if posemb not in POSEMBS:
    fail("model.posemb", f"{posemb!r}; valid: {', '.join(POSEMBS)}")
  if remat not in REMAT_POLICIES:
    fail("model.remat", f"{remat!r}; valid: {', '.join(REMAT_POLICIES)}")


def finetune(model: dict) -> dict:
  """The ``config.model`` to fine-tune a ViT pretrained with ``model`` (MAE / paper
  Table A): global pooling, drop path 0.1; fixed sin-cos position embeddings
  become trainable from their sin-cos values (appendix A.2), and an encoder
  pretrained without any (AE + sorting) gets trainable ones from zeros."""
  posemb = model.get("posemb", "learn")
  posemb = {"sincos2d": "sincos2d_learn", "none": "zeros_learn"}.get(posemb, posemb)
  return dict(model, pool="gap", drop_path=0.1, posemb=posemb)


def interpolate_posemb(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[1, h*w, D] position embeddings of a square h x w grid -> [1, gh*gw, D],
  resized bicubically on the 2D grid (MAE's ``interpolate_pos_embed``)."""
  n, d = posemb.shape[1], posemb.shape[2]
  side = int(round(n ** 0.5))
  if side * side != n:
    raise CheckpointError(f"pos_embedding has {n} positions, not a square grid; cannot "
                          "interpolate it")
  if (side, side) == tuple(grid):
    return posemb
  x = jnp.asarray(posemb, jnp.float32).reshape(side, side, d)
  x = jax.image.resize(x, (grid[0], grid[1], d), method="bicubic")
  return np.asarray(x.reshape(1, grid[0] * grid[1], d), posemb.dtype)


def load(target: dict, loaded: dict, model: dict, log=print) -> dict:
  """``target`` ViT params with the ``loaded`` ones: position embeddings of another
  grid are resampled; the cls token may be dropped (fine-tuning pools globally);
  position embeddings may be fresh where ``model`` makes them trainable from
  sin-cos values or zeros (``finetune``)."""
  from ebm_pretrain.models import loading

  def adapt(path, w, shape):
    side = int(round(shape[1] ** 0.5)) if len(shape) == 3 else 0
    if path.split("/")[-1] == "pos_embedding" and w.ndim == 3 and w.shape[-1] == shape[-1] \
        and side * side == shape[1]:
      log(f"Interpolating {path} from {w.shape[1]} to {shape[1]} positions")
      return interpolate_posemb(w, (side, side))
    return w
  fresh = ("pos_embedding",) if model.get("posemb") in ("sincos2d_learn", "zeros_learn") else ()
  try:
    return loading.match(target, loaded, unused_ok=("cls",), fresh_ok=fresh, adapt=adapt, log=log)
  except CheckpointError as e:
    if "pos_embedding" in target and "pos_embedding" not in loaded and not fresh:
      raise CheckpointError(f"{e}\n(a checkpoint pretrained with fixed sin-cos position "
                              "embeddings has no pos_embedding: fine-tune with "
                              "--config.model.posemb=sincos2d_learn)") from None
    raise


def pyramid_blocks(depth: int) -> tuple[int, ...]:
  """The four blocks (0-based) whose outputs feed segmentation: at a third, half,
  two thirds and the end of the depth (ViT-B: 3, 5, 7, 11; ViT-L: 7, 11, 15, 23,
  BEiT's and MAE's ``out_indices``)."""
  return tuple(max(round(depth * f) - 1, 0) for f in (1 / 3, 1 / 2, 2 / 3, 1))


def layer_id(path: str, variant: str) -> tuple[int, int]:
  """(layer index, number of layers) of a ViT parameter, for layer-wise lr decay
  (BEiT / MAE ``param_groups_lrd``): the patch embedding, cls token and position
  embedding are layer 0, block i is layer i + 1, and everything after the blocks
  (``encoder_norm``, heads) is layer depth + 1."""
  depth = decode_variant(variant)["depth"]
  m = re.search(r"encoderblock_(\d+)/", path)
  if m:
    return int(m.group(1)) + 1, depth + 1
  if re.search(r"(^|/)(embedding|cls|pos_embedding)(/|$)", path):
    return 0, depth + 1
  return depth + 1, depth + 1


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = dict(kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.normal(stddev=1e-6),
                dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, **init)(x)
    x = nn.gelu(x, approximate=False)  # exact (erf) GELU, as in the original ViT
    return nn.Dense(d, **init)(x)


class Encoder1DBlock(nn.Module):
  mlp_dim: int
  num_heads: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(**kw)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        deterministic=True, **kw)(y, y)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(**kw)(x)
    y = MlpBlock(self.mlp_dim, **kw)(y)
    return x + DropPath(self.drop_path)(y, deterministic)


# Rematerialisation policies for the encoder blocks (trade compute for memory:
# the energy step differentiates through the network twice).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, deterministic: bool = True, keep_blocks: tuple[int, ...] = ()):
    """The final normed tokens, or with ``keep_blocks`` also the outputs of those
    blocks (un-normed, as BEiT / MAE take them for segmentation)."""
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {self.remat!r}; valid: {', '.join(REMAT_POLICIES)}")
    block = Encoder1DBlock
    if self.remat != "none":
      block = nn.remat(Encoder1DBlock, policy=REMAT_POLICIES[self.remat], static_argnums=(2,))
    kept = []
    for i in range(self.depth):
      # Linearly increasing drop-path rate with depth, as in DeiT / MAE.
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = block(self.mlp_dim, self.num_heads, rate, self.dtype,
                self.param_dtype, name=f"encoderblock_{i}")(x, deterministic)
      kept += [x] * keep_blocks.count(i)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)
    return (x, kept) if keep_blocks else x


class ViT(nn.Module):
  """ViT feature extractor: images [B, H, W, C] -> features [B, width].

  pool: "tok" (the cls token) or "gap" (mean over the patch tokens), both after
    the final ``encoder_norm``, as in big_vision.
  posemb: "learn" (learnable, init N(0, 0.02)), "sincos2d" (fixed),
    "sincos2d_learn" (learnable, initialised to the sin-cos values: how
    fine-tuning makes fixed embeddings trainable, paper appendix A.2), "none"
    (the AE + sorting baseline's encoder), or "zeros_learn" (learnable from
    zeros: fine-tuning that baseline).
  """
  variant: str = "S/16"
  pool: str = "tok"
  posemb: str = "learn"
  drop_path: float = 0.0
  remat: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def width(self) -> int:
    return decode_variant(self.variant)["width"]

  def patch_grid(self, image_hw) -> tuple[int, int]:
    p = decode_variant(self.variant)["patch_size"]
    h, w = image_hw
    if h % p or w % p:
      raise ValueError(f"ViT {self.variant}: patch size {p} does not divide the "
                       f"image size {h}x{w}")
    return h // p, w // p

  def position_embedding(self, gh: int, gw: int, width: int) -> jax.Array:
    if self.posemb == "sincos2d":
      return posemb_sincos_2d(gh, gw, width, dtype=self.param_dtype)
    if self.posemb == "learn":
      return self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                        (1, gh * gw, width), self.param_dtype)
    if self.posemb == "sincos2d_learn":
      return self.param("pos_embedding",
                        lambda _, shape, dtype: posemb_sincos_2d(gh, gw, width, dtype=dtype),
                        (1, gh * gw, width), self.param_dtype)
    if self.posemb == "none":
      return jnp.zeros((1, gh * gw, width), self.param_dtype)
    if self.posemb == "zeros_learn":
      return self.param("pos_embedding", nn.initializers.zeros, (1, gh * gw, width),
                        self.param_dtype)
    raise ValueError(f"unknown posemb {self.posemb!r}; valid: {', '.join(POSEMBS)}")

  @nn.compact
  def __call__(self, images, *, train: bool = False, posemb=None, keep=None,
               tokens: bool = False, pyramid: bool = False, block: int | None = None):
    """``posemb`` [B, K, width], if given, replaces the position embeddings of the
    patch tokens (patch sorting feeds the shuffled ones as the energy's input);
    ``keep`` [B, K] int keeps only those patch tokens (patch dropout, MAE's
    visible patches), and then ``posemb`` holds the kept tokens' embeddings, in
    ``keep``'s order. ``tokens=True`` returns the patch tokens [B, K, width]
    after ``encoder_norm`` instead of the pooled features (autoencoders).
    ``pyramid=True`` returns the patch-token maps [B, H/p, W/p, width] of four
    evenly spaced blocks (:func:`pyramid_blocks`: 3, 5, 7, 11 of ViT-B's 12, as
    BEiT and MAE segment), for a segmentation neck to rescale. ``block=i``
    returns the patch tokens [B, K, width] of block i (negative: from the end),
    un-normed, for reading frozen features inside the network."""
    cfg = decode_variant(self.variant)
    if images.ndim != 4:
      raise ValueError(f"ViT expects images [B, H, W, C], got shape {images.shape}")
    if self.pool not in ("tok", "gap"):
      raise ValueError(f"unknown pool {self.pool!r}; valid: 'tok', 'gap'")
    gh, gw = self.patch_grid(images.shape[1:3])
    p, width = cfg["patch_size"], cfg["width"]
    x = PatchConv(width, p, name="embedding", dtype=self.dtype,
                  param_dtype=self.param_dtype)(images.astype(self.dtype))
    x = x.reshape(x.shape[0], gh * gw, width)
    if posemb is None:
      x = x + self.position_embedding(gh, gw, width).astype(self.dtype)
    if keep is not None:
      x = jnp.take_along_axis(x, keep[:, :, None], axis=1)
    if posemb is not None:
      if posemb.shape[1:] != x.shape[1:]:
        raise ValueError(f"posemb has shape {posemb.shape}; the patch tokens are {x.shape}")
      x = x + posemb.astype(self.dtype)
    if self.pool == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width), self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (x.shape[0], 1, 1)), x], axis=1)
    encoder = Encoder(cfg["depth"], cfg["mlp_dim"], cfg["num_heads"], self.drop_path,
                      self.dtype, self.param_dtype, self.remat, name="Transformer")
    first = 1 if self.pool == "tok" else 0  # the patch tokens start here
    if pyramid:
      if keep is not None:
        raise ValueError("pyramid=True needs every patch token (keep=None)")
      _, kept = encoder(x, not train, pyramid_blocks(cfg["depth"]))
      return [k[:, first:].reshape(k.shape[0], gh, gw, width) for k in kept]
    if block is not None:
      if not -cfg["depth"] <= block < cfg["depth"]:
        raise ValueError(f"block={block}: ViT {self.variant} has {cfg['depth']} blocks")
      _, kept = encoder(x, not train, (block % cfg["depth"],))
      return kept[0][:, first:]
    x = encoder(x, not train)
    if tokens:
      return x[:, 1:] if self.pool == "tok" else x
    return x[:, 0] if self.pool == "tok" else jnp.mean(x, axis=1)
