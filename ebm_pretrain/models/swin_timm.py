"""Our Swin <-> timm's ``SwinTransformer``: parameter names and layouts, and the
keyword arguments that rebuild the same network in timm (``models/vit_timm.py``
for the contract). Ours keeps the official layout, a stage's patch merging at
its end (``layers_i/downsample``); timm puts it at the start of the next stage
(``layers.{i+1}.downsample``). The merging order of the 2x2 neighbours, the
relative position index, the clamping of the window to a smaller map and the
final norm + average pooling agree; timm masks shifted windows with -100 where
ours gives exactly zero weight (a difference of e^-100)."""
from __future__ import annotations

import numpy as np

from ebm_pretrain.models import timm_layout as layout
from ebm_pretrain.models.swin import VARIANTS, decode_variant

_NAMES = {"T": "swin_tiny_patch4_window7_224", "S": "swin_small_patch4_window7_224",
          "B": "swin_base_patch4_window7_224", "L": "swin_large_patch4_window7_224"}


def timm_kwargs(model: dict, image_size: int, channels: int) -> tuple[str, dict]:
  cfg = decode_variant(model["variant"])
  return _NAMES.get(model["variant"], _NAMES["T"]), dict(
      img_size=image_size, patch_size=cfg["patch"], in_chans=channels,
      embed_dim=cfg["embed_dim"], depths=tuple(cfg["depths"]),
      num_heads=tuple(cfg["num_heads"]), window_size=cfg["window"], num_classes=0)


def model_of(architecture: str, kwargs: dict) -> dict | None:
  if not architecture.startswith("swin_"):
    return None
  for name, cfg in VARIANTS.items():
    if (cfg["embed_dim"], tuple(cfg["depths"]), tuple(cfg["num_heads"]), cfg["window"],
        cfg["patch"]) == (kwargs["embed_dim"], tuple(kwargs["depths"]),
                          tuple(kwargs["num_heads"]), kwargs["window_size"],
                          kwargs["patch_size"]):
      return dict(name="swin", variant=name)
  raise ValueError(f"{architecture} with {kwargs} is none of our Swin sizes "
                   f"({', '.join(VARIANTS)})")


_BLOCK = (("norm1", "norm"), ("attn/qkv", "dense"), ("attn/proj", "dense"), ("norm2", "norm"),
          ("mlp/fc1", "dense"), ("mlp/fc2", "dense"))
_MERGE = (("norm", "norm"), ("reduction", "dense"))


def _at(tree: dict, path: str) -> dict:
  for key in path.split("/"):
    tree = tree[key]
  return tree


def to_timm(params: dict, model: dict, image_size: int, channels: int
            ) -> tuple[str, dict, dict[str, np.ndarray]]:
  name, kwargs = timm_kwargs(model, image_size, channels)
  sd = {}
  layout.put(sd, "patch_embed.proj", params["patch_embed"], "conv")
  layout.put(sd, "patch_embed.norm", params["patch_embed_norm"], "norm")
  for s, depth in enumerate(kwargs["depths"]):
    stage = params[f"layers_{s}"]
    for j in range(depth):
      b, pre = stage[f"blocks_{j}"], f"layers.{s}.blocks.{j}."
      for ours, kind in _BLOCK:
        layout.put(sd, pre + ours.replace("/", "."), _at(b, ours), kind)
      sd[pre + "attn.relative_position_bias_table"] = np.asarray(
          b["attn"]["relative_position_bias_table"])
    if "downsample" in stage:
      for ours, kind in _MERGE:
        layout.put(sd, f"layers.{s + 1}.downsample.{ours}", stage["downsample"][ours], kind)
  layout.put(sd, "norm", params["norm"], "norm")
  return name, kwargs, layout.finish(sd)


def from_timm(sd: dict[str, np.ndarray], model: dict) -> dict:
  cfg = decode_variant(model["variant"])
  st = layout.State(sd, f"Swin {model['variant']}")
  p = {"patch_embed": st.layer("patch_embed.proj", "conv"),
       "patch_embed_norm": st.layer("patch_embed.norm", "norm"),
       "norm": st.layer("norm", "norm")}
  depths = cfg["depths"]
  for s, depth in enumerate(depths):
    stage = {}
    for j in range(depth):
      pre, b = f"layers.{s}.blocks.{j}.", {"attn": {}, "mlp": {}}
      for ours, kind in _BLOCK:
        parent, _, leaf = ours.rpartition("/")
        (b[parent] if parent else b)[leaf] = st.layer(pre + ours.replace("/", "."), kind)
      b["attn"]["relative_position_bias_table"] = st[pre + "attn.relative_position_bias_table"]
      stage[f"blocks_{j}"] = b
    if s < len(depths) - 1:
      stage["downsample"] = {ours: st.layer(f"layers.{s + 1}.downsample.{ours}", kind)
                             for ours, kind in _MERGE}
    p[f"layers_{s}"] = stage
  return p
