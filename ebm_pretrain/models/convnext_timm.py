"""Our ConvNeXt <-> timm's ``ConvNeXt``: parameter names and layouts, and the
keyword arguments that rebuild the same network in timm (``models/vit_timm.py``
for the contract). timm's ConvNeXt has four stages after a stride-4 patch stem:
the T/S/B/L variants and our pico; our 3-stage test and demo sizes (mu, nano)
have no timm equivalent. LayerNorm eps 1e-6, exact GELU, layer scale ``gamma`` on both sides;
the features are the pooled, normalised ones (timm ``head.norm``)."""
from __future__ import annotations

import numpy as np

from ebm_pretrain.models import timm_layout as layout
from ebm_pretrain.models.convnext import VARIANTS, decode_variant

_NAMES = {"T": "convnext_tiny", "S": "convnext_small", "B": "convnext_base",
          "L": "convnext_large"}


def timm_kwargs(model: dict, image_size: int, channels: int) -> tuple[str, dict]:
  cfg = decode_variant(model["variant"])
  if len(cfg["depths"]) != 4 or cfg["stem"] != 4:
    raise ValueError(f"ConvNeXt {model['variant']} has {len(cfg['depths'])} stages after a "
                     f"stride-{cfg['stem']} stem; timm's ConvNeXt has 4 after a stride-4 one "
                     f"(variants {', '.join(_NAMES)}, pico)")
  return _NAMES.get(model["variant"], _NAMES["T"]), dict(in_chans=channels, depths=tuple(cfg["depths"]),
                                        dims=tuple(cfg["dims"]), num_classes=0)


def model_of(architecture: str, kwargs: dict) -> dict | None:
  if not architecture.startswith("convnext_"):
    return None
  for name, cfg in VARIANTS.items():
    if tuple(cfg["depths"]) == tuple(kwargs["depths"]) and \
        tuple(cfg["dims"]) == tuple(kwargs["dims"]):
      return dict(name="convnext", variant=name)
  raise ValueError(f"{architecture} with depths {kwargs['depths']}, dims {kwargs['dims']} is "
                   f"none of our ConvNeXt sizes ({', '.join(VARIANTS)})")


_BLOCK = (("dwconv", "conv_dw", "conv"), ("norm", "norm", "norm"),
          ("pwconv1", "mlp.fc1", "dense"), ("pwconv2", "mlp.fc2", "dense"))


def _downsample(stage: int) -> tuple[tuple[str, str, str], ...]:
  """(our layer, timm's, kind) of a stage's downsampling: the stem (conv, then
  norm) or a LayerNorm + 2x2 conv."""
  if stage == 0:
    return (("conv", "stem.0", "conv"), ("norm", "stem.1", "norm"))
  return (("norm", f"stages.{stage}.downsample.0", "norm"),
          ("conv", f"stages.{stage}.downsample.1", "conv"))


def to_timm(params: dict, model: dict, image_size: int, channels: int
            ) -> tuple[str, dict, dict[str, np.ndarray]]:
  name, kwargs = timm_kwargs(model, image_size, channels)
  sd = {}
  for s, depth in enumerate(kwargs["depths"]):
    for ours, theirs, kind in _downsample(s):
      layout.put(sd, theirs, params[f"downsample_layers_{s}"][ours], kind)
    for j in range(depth):
      b, pre = params[f"stages_{s}"][f"blocks_{j}"], f"stages.{s}.blocks.{j}."
      sd[pre + "gamma"] = np.asarray(b["gamma"])
      for ours, theirs, kind in _BLOCK:
        layout.put(sd, pre + theirs, b[ours], kind)
  layout.put(sd, "head.norm", params["norm"], "norm")
  return name, kwargs, layout.finish(sd)


def from_timm(sd: dict[str, np.ndarray], model: dict) -> dict:
  cfg = decode_variant(model["variant"])
  st = layout.State(sd, f"ConvNeXt {model['variant']}")
  p = {}
  for s, depth in enumerate(cfg["depths"]):
    p[f"downsample_layers_{s}"] = {ours: st.layer(theirs, kind)
                                   for ours, theirs, kind in _downsample(s)}
    p[f"stages_{s}"] = {
        f"blocks_{j}": {"gamma": st[f"stages.{s}.blocks.{j}.gamma"],
                        **{ours: st.layer(f"stages.{s}.blocks.{j}.{theirs}", kind)
                           for ours, theirs, kind in _BLOCK}}
        for j in range(depth)}
  p["norm"] = st.layer("head.norm", "norm")
  return p
