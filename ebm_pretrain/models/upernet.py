"""UperNet for semantic segmentation on any backbone's feature pyramid (paper
Table 7, after mmsegmentation's ``UPerHead`` and the BEiT / MAE ViT necks).

``SegmentationModel(backbone, num_classes)`` maps images [B, H, W, C] to
per-pixel logits [B, H, W, num_classes]:
- the backbone's ``pyramid=True`` maps, finest first (ConvNeXt and Swin: their
  stage outputs; ViT: four evenly spaced blocks' patch tokens at one stride);
- a neck: a plain ViT's single-stride maps become four scales by
  deconvolutions and pooling (×4: ConvT, BatchNorm, GELU, ConvT; ×2: ConvT;
  ×1; ×½: 2×2 max pool; BEiT's ``fpn1..4``), hierarchical maps get a
  LayerNorm each (mmsegmentation's per-output norms);
- UperNet: a pyramid pooling module (adaptive average pools at 1, 2, 3, 6 on
  the coarsest map), lateral 1×1 convolutions, a top-down path (bilinear
  upsampling and addition), 3×3 convolutions per level, all levels upsampled to
  the finest and fused by a 3×3 convolution; every convolution is conv (no
  bias) + BatchNorm + ReLU (``ConvModule``); then dropout 0.1, a 1×1
  classifier and bilinear upsampling to the input size (``align_corners=False``);
- optionally the auxiliary FCN head on the stride-16 level (training loss only).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C], PyTorch's ``adaptive_avg_pool2d`` bins
  (bin i covers floor(i·H/size) to ceil((i+1)·H/size))."""
  def bins(n):
    return [(int(np.floor(i * n / size)), int(np.ceil((i + 1) * n / size))) for i in range(size)]
  rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(x.shape[1])]        # size x [B, W, C]
  return jnp.stack([jnp.stack([jnp.mean(r[:, a:b], axis=1) for a, b in bins(x.shape[2])], 1)
                    for r in rows], 1)


def resize_bilinear(x: jax.Array, hw: Sequence[int]) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to ``hw`` with half-pixel centres (PyTorch's
  ``align_corners=False``); upsampling only, so no antialiasing question."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method="bilinear")


class ConvModule(nn.Module):
  """Conv (no bias) + BatchNorm + ReLU: mmsegmentation's ``ConvModule``."""
  features: int
  kernel: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                **kw)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, **kw)(x)
    return nn.relu(x)


class ViTNeck(nn.Module):
  """Four maps at one stride -> strides ×4, ×2, ×1, ×½ of it (BEiT's fpn1..fpn4)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels, train: bool):
    if len(levels) != 4:
      raise ValueError(f"the ViT neck takes 4 maps, got {len(levels)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = levels[0].shape[-1]
    up = lambda name: nn.ConvTranspose(d, (2, 2), strides=(2, 2), name=name, **kw)
    x0 = up("fpn1_up1")(levels[0])
    x0 = nn.gelu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="fpn1_bn",
                              **kw)(x0), approximate=False)
    x0 = up("fpn1_up2")(x0)
    x1 = up("fpn2_up")(levels[1])
    x3 = nn.max_pool(levels[3], (2, 2), strides=(2, 2))
    return [x0, x1, levels[2], x3]


class UperNetHead(nn.Module):
  """Pyramid maps (finest first) -> logits at the finest map's size."""
  num_classes: int
  channels: int = 512
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda k, name: ConvModule(self.channels, k, name=name, **kw)
    top = levels[-1]
    # Pyramid pooling on the coarsest map.
    pooled = [top] + [resize_bilinear(conv(1, f"ppm_{s}")(adaptive_avg_pool(top, s), train),
                                      top.shape[1:3]) for s in self.pool_scales]
    laterals = [conv(1, f"lateral_{i}")(x, train) for i, x in enumerate(levels[:-1])]
    laterals.append(conv(3, "bottleneck")(jnp.concatenate(pooled, axis=-1), train))
    # Top-down: each level plus the upsampled coarser one.
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(3, f"fpn_{i}")(x, train) for i, x in enumerate(laterals[:-1])] + [laterals[-1]]
    size = outs[0].shape[1:3]
    x = conv(3, "fpn_bottleneck")(
        jnp.concatenate([resize_bilinear(o, size) for o in outs], axis=-1), train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), name="cls_seg", **kw)(x)


class FCNHead(nn.Module):
  """The auxiliary head (mmsegmentation's ``FCNHead``, one 3x3 ConvModule, dropout
  0.1, a 1x1 classifier) on one pyramid level: a training-only loss term."""
  num_classes: int
  channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ConvModule(self.channels, 3, name="conv", **kw)(x, train)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), name="cls_seg", **kw)(x)


class SegmentationModel(nn.Module):
  """``backbone`` (any family with ``pyramid=True``) + neck + UperNet:
  images [B, H, W, C] -> logits [B, H, W, num_classes] in float32. With
  ``aux_channels`` > 0, an auxiliary ``FCNHead`` reads the third level (stride
  16, as BEiT / MAE configure it) and ``aux=True`` returns (logits, aux logits)."""
  backbone: nn.Module
  num_classes: int
  channels: int = 512
  aux_channels: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, aux: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    levels = self.backbone(images, train=train, pyramid=True)
    if len({x.shape[1:3] for x in levels}) == 1:  # a plain ViT: one stride
      levels = ViTNeck(name="neck", **kw)(levels, train)
    else:
      levels = [nn.LayerNorm(epsilon=1e-6, name=f"neck_norm_{i}", **kw)(x)
                for i, x in enumerate(levels)]
    logits = UperNetHead(self.num_classes, self.channels, name="decode_head", **kw)(levels, train)
    logits = resize_bilinear(logits, images.shape[1:3]).astype(jnp.float32)
    if self.aux_channels:
      level = levels[min(2, len(levels) - 1)]
      aux_logits = FCNHead(self.num_classes, self.aux_channels, name="auxiliary_head", **kw)(
          level, train)
      if aux:
        return logits, resize_bilinear(aux_logits, images.shape[1:3]).astype(jnp.float32)
    return logits
