"""Swin Transformer backbone (Liu et al. 2021): window attention with a relative
position bias, shifted windows with their attention mask, patch merging.

Sizes by variant name (``"T"``, ``"S"``, ``"B"``, ``"L"``; ``"mu"`` and ``"nano"``
are ours, for tests and CPU demos: 4x4 windows; mu has 2x2 patches). Parameter names
follow the official code (``patch_embed``, ``layers_i/blocks_j/{norm1, attn/{qkv,
proj, relative_position_bias_table}, norm2, mlp/{fc1, fc2}}``,
``layers_i/downsample``, ``norm``). Features are the official head's input: the
final LayerNorm, then global average pooling.

As in the official code, a stage whose feature map is no larger than the window
attends over the whole map, unshifted, and a map that does not split into whole
windows is padded with zero tokens for attention (512 px segmentation crops with
7 x 7 windows); the image size must downsample evenly through every stage.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ebm_pretrain.models import layers
from ebm_pretrain.models.layers import DropPath, PatchConv, drop_path_rates

Dtype = Any

VARIANTS = {
    "mu": dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window=4, patch=2),
    "nano": dict(embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), window=4, patch=4),
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window=7, patch=4),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window=7, patch=4),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window=7, patch=4),
    "L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window=7, patch=4),
}


def decode_variant(variant: str) -> dict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown Swin variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return VARIANTS[variant]


def layer_id(path: str, variant: str) -> tuple[int, int]:
  """(layer index, number of layers) for layer-wise lr decay, as SimMIM's Swin
  fine-tuning (``get_swin_layer``): the patch embedding is layer 0, block j of
  stage s is sum(depths[:s]) + j + 1, a stage's patch merging shares the layer of
  its last block, and the final norm and heads come last."""
  depths = decode_variant(variant)["depths"]
  n = sum(depths) + 1
  if path.startswith("patch_embed"):
    return 0, n
  m = re.match(r"layers_(\d+)/blocks_(\d+)/", path)
  if m:
    s, j = int(m.group(1)), int(m.group(2))
    return sum(depths[:s]) + j + 1, n
  m = re.match(r"layers_(\d+)/downsample/", path)
  if m:
    return sum(depths[:int(m.group(1)) + 1]), n
  return n, n


def window_partition(x, window: int):
  """[B, H, W, C] -> [B * num_windows, window * window, C], windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
  """The inverse of ``window_partition``."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
  """[window^2, window^2] indices into the (2 window - 1)^2 bias table."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """[num_windows, window^2, window^2] bool, True where two tokens of a window of
  the cyclically shifted map may attend to each other: only if they came from the
  same region of the unshifted map (no wrap-around neighbours)."""
  region = np.zeros((1, h, w, 1), np.int32)
  slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  label = 0
  for hs in slices:
    for ws in slices:
      region[:, hs, ws, :] = label
      label += 1
  ids = window_partition(region, window)[..., 0]  # [num_windows, window^2]
  return ids[:, :, None] == ids[:, None, :]


class WindowAttention(nn.Module):
  """Multi-head self-attention within windows, with a learned relative position bias."""
  num_heads: int
  window: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: [B * num_windows, N, C]; mask: [num_windows, N, N] bool or None."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.truncated_normal(0.02), bias_init=nn.initializers.zeros)
    b, n, c = x.shape
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, name="qkv", **kw)(x).reshape(b, n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * hd ** -0.5, k).astype(jnp.float32)
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
    bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, -1)
    logits = logits + bias.transpose(2, 0, 1).astype(jnp.float32)[None]
    if mask is not None:
      nw = mask.shape[0]
      logits = logits.reshape(b // nw, nw, self.num_heads, n, n)
      # Masked pairs get exactly zero weight (the official code adds -100).
      logits = jnp.where(jnp.asarray(mask)[None, :, None], logits, jnp.finfo(jnp.float32).min)
      logits = logits.reshape(b, self.num_heads, n, n)
    attn = nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, c)
    return nn.Dense(c, name="proj", **kw)(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.truncated_normal(0.02), bias_init=nn.initializers.zeros)
    y = nn.gelu(nn.Dense(self.hidden, name="fc1", **kw)(x), approximate=False)
    return nn.Dense(x.shape[-1], name="fc2", **kw)(y)


class SwinBlock(nn.Module):
  """(Shifted) window attention and a 4x MLP, each pre-norm with a residual."""
  num_heads: int
  window: int
  shift: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    """x: [B, H, W, C]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _, h, w, c = x.shape
    y = nn.LayerNorm(epsilon=1e-5, name="norm1", **kw)(x)
    # A map that does not split into windows is padded at the bottom and right
    # with zero tokens, then shifted, and cropped back after attention (the
    # official Swin and mmsegmentation; timm shifts first, then pads): how 512 px
    # segmentation crops work with 7 x 7 windows.
    hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
    y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    mask = None
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
      mask = shifted_window_mask(hp, wp, self.window, self.shift)
    y = WindowAttention(self.num_heads, self.window, name="attn", **kw)(
        window_partition(y, self.window), mask)
    y = window_reverse(y, self.window, hp, wp)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    y = y[:, :h, :w]
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=1e-5, name="norm2", **kw)(x)
    y = Mlp(4 * c, name="mlp", **kw)(y)
    return x + DropPath(self.drop_path)(y, deterministic)


class PatchMerging(nn.Module):
  """2x2 neighbouring tokens concatenated (4C), LayerNorm, linear to 2C."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = nn.LayerNorm(epsilon=1e-5, name="norm", **kw)(x)
    return nn.Dense(2 * c, use_bias=False, name="reduction",
                    kernel_init=nn.initializers.truncated_normal(0.02), **kw)(x)


class SwinStage(nn.Module):
  depth: int
  num_heads: int
  window: int
  rates: tuple[float, ...]
  downsample: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _, h, w, _ = x.shape
    window = self.window
    shift = window // 2
    if min(h, w) <= window:  # the whole map is one window: no shift (official code)
      window, shift = min(h, w), 0
    for j in range(self.depth):
      x = SwinBlock(self.num_heads, window, shift if j % 2 else 0, self.rates[j],
                    name=f"blocks_{j}", **kw)(x, deterministic)
    # (the stage's output: a pyramid level; the next stage's input)
    return x, PatchMerging(name="downsample", **kw)(x) if self.downsample else x


def check_images(variant: str, images) -> None:
  """Raises a clear ValueError for a batch that is not [B, H, W, C] or whose size
  does not downsample evenly at every stage (maps that do not split into
  windows are padded: ``SwinBlock``)."""
  cfg = decode_variant(variant)
  num_stages = len(cfg["depths"])
  layers.check_images("Swin", variant, images, cfg["patch"] * 2 ** (num_stages - 1))


class Swin(nn.Module):
  """Swin feature extractor: images [B, H, W, C] -> features [B, embed_dim * 2^(S-1)];
  ``pyramid=True``: each stage's output map [B, H/s, W/s, C_s] (before its patch
  merging, as mmsegmentation's Swin gives them to UperNet), finest first."""
  variant: str = "T"
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, pyramid: bool = False):
    cfg = decode_variant(self.variant)
    check_images(self.variant, images)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = cfg["patch"]
    x = PatchConv(cfg["embed_dim"], p, name="patch_embed",
                  kernel_init=nn.initializers.truncated_normal(0.02), **kw)(images.astype(self.dtype))
    x = nn.LayerNorm(epsilon=1e-5, name="patch_embed_norm", **kw)(x)
    depths = cfg["depths"]
    rates = drop_path_rates(self.drop_path, depths)
    levels = []
    for s, (depth, heads) in enumerate(zip(depths, cfg["num_heads"])):
      level, x = SwinStage(depth, heads, cfg["window"], tuple(rates[s]), s < len(depths) - 1,
                           name=f"layers_{s}", **kw)(x, not train)
      levels.append(level)
    if pyramid:
      return levels
    x = nn.LayerNorm(epsilon=1e-5, name="norm", **kw)(x)
    return jnp.mean(x, axis=(1, 2))
