"""Our ViT <-> timm's ``VisionTransformer``: parameter names and layouts, and the
keyword arguments that rebuild the same network in timm.

The correspondence: the position embedding covers the patch tokens only, the
cls token gets none (timm ``no_embed_class=True``); ``pool="tok"`` is timm's
``global_pool="token"``, ``pool="gap"`` averages the patch tokens after the
final LayerNorm (``global_pool="avg"``, ``fc_norm=False``); LayerNorm eps 1e-6
and exact GELU on both sides. Fixed sin-cos embeddings (``posemb="sincos2d"``)
and none (``"none"``) are written out as values (zeros for none). Arrays are
numpy, torch layouts (Linear [out, in], Conv2d [out, in, kh, kw]); nothing here
imports torch."""
from __future__ import annotations

import numpy as np

from ebm_pretrain.errors import CheckpointError
from ebm_pretrain.models import timm_layout as layout
from ebm_pretrain.models.vit import decode_variant, posemb_sincos_2d

# timm's registered names for the standard sizes (kwargs override them anyway).
_NAMES = {"Ti": "vit_tiny", "S": "vit_small", "B": "vit_base", "L": "vit_large"}


def timm_kwargs(model: dict, image_size: int, channels: int) -> tuple[str, dict]:
  """(the timm architecture name, ``timm.create_model`` kwargs) of a ViT config."""
  cfg = decode_variant(model["variant"])
  size, patch = model["variant"].split("/")[0], cfg["patch_size"]
  tok = model.get("pool", "tok") == "tok"
  # the size's registered name where timm has one; the kwargs define the network either way
  name = f"{_NAMES[size]}_patch16_224" if size in _NAMES else "vit_base_patch16_224"
  return name, dict(
      img_size=image_size, patch_size=patch, in_chans=channels, embed_dim=cfg["width"],
      depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_dim"] / cfg["width"],
      qkv_bias=True, class_token=tok, no_embed_class=True,
      global_pool="token" if tok else "avg", fc_norm=False, num_classes=0)


def model_of(architecture: str, kwargs: dict) -> dict | None:
  """Our ``config.model`` for a timm ViT written by ``to_timm`` (its config.json:
  architecture and kwargs), or None if the architecture is not a ViT."""
  if not architecture.startswith("vit_"):
    return None
  from ebm_pretrain.models.vit import VARIANTS
  width, depth, heads = kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]
  mlp = int(round(kwargs.get("mlp_ratio", 4.0) * width))
  names = [n for n, v in VARIANTS.items()
           if (v["width"], v["depth"], v["mlp_dim"], v["num_heads"]) == (width, depth, mlp, heads)]
  if not names:
    raise ValueError(f"{architecture} with width {width}, depth {depth}, mlp {mlp}, {heads} "
                     f"heads is none of our ViT sizes ({', '.join(VARIANTS)})")
  tok = kwargs.get("class_token", True) and kwargs.get("global_pool", "token") == "token"
  return dict(name="vit", variant=f"{names[0]}/{kwargs['patch_size']}",
              pool="tok" if tok else "gap", posemb="learn")


def to_timm(params: dict, model: dict, image_size: int, channels: int
            ) -> tuple[str, dict, dict[str, np.ndarray]]:
  """(timm name, kwargs, state dict) of ViT backbone ``params``."""
  name, kwargs = timm_kwargs(model, image_size, channels)
  cfg = decode_variant(model["variant"])
  d, grid = cfg["width"], image_size // cfg["patch_size"]
  sd = {}
  layout.put(sd, "patch_embed.proj", params["embedding"], "conv")
  if kwargs["class_token"]:
    sd["cls_token"] = np.asarray(params["cls"])
  if "pos_embedding" in params:
    sd["pos_embed"] = np.asarray(params["pos_embedding"])
  elif model.get("posemb") == "sincos2d":
    sd["pos_embed"] = np.asarray(posemb_sincos_2d(grid, grid, d))
  else:  # "none": no position information
    sd["pos_embed"] = np.zeros((1, grid * grid, d), np.float32)
  t = params["Transformer"]
  for i in range(cfg["depth"]):
    b, pre = t[f"encoderblock_{i}"], f"blocks.{i}."
    attn = b["MultiHeadDotProductAttention_0"]
    qkv = [np.asarray(attn[k]["kernel"]).reshape(d, d) for k in ("query", "key", "value")]
    sd[pre + "attn.qkv.weight"] = np.concatenate(qkv, axis=1).T
    sd[pre + "attn.qkv.bias"] = np.concatenate(
        [np.asarray(attn[k]["bias"]).reshape(d) for k in ("query", "key", "value")])
    sd[pre + "attn.proj.weight"] = np.asarray(attn["out"]["kernel"]).reshape(d, d).T
    sd[pre + "attn.proj.bias"] = np.asarray(attn["out"]["bias"])
    layout.put(sd, pre + "norm1", b["LayerNorm_0"], "norm")
    layout.put(sd, pre + "norm2", b["LayerNorm_1"], "norm")
    layout.put(sd, pre + "mlp.fc1", b["MlpBlock_0"]["Dense_0"], "dense")
    layout.put(sd, pre + "mlp.fc2", b["MlpBlock_0"]["Dense_1"], "dense")
  layout.put(sd, "norm", t["encoder_norm"], "norm")
  return name, kwargs, layout.finish(sd)


def from_timm(sd: dict[str, np.ndarray], model: dict) -> dict:
  """ViT backbone params for ``model`` (its variant and posemb) from a timm state
  dict: ``to_timm``'s inverse, and timm's own ViTs (a position embedding with a
  cls slot, ``no_embed_class=False``, has that slot added to the cls token).
  The cls token comes when the state has one (a global-pool model drops it when
  loading). CheckpointError names what is missing."""
  if "fc_norm.weight" in sd:
    raise CheckpointError("the timm model normalises after pooling (fc_norm); ours "
                          "normalises the tokens before it: not the same network")
  s = layout.State(sd, f"ViT {model['variant']}")
  # The state's own width and depth, so that another size loads as a list of
  # mismatched paths (models.load_backbone), not a reshape error.
  d = s["patch_embed.proj.weight"].shape[0]
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  heads = decode_variant(model["variant"])["num_heads"]
  heads = heads if d % heads == 0 else 1
  p = {"embedding": s.layer("patch_embed.proj", "conv")}
  pos = s["pos_embed"] if "pos_embed" in s else None
  if "cls_token" in s:
    p["cls"] = s["cls_token"]
    n = pos.shape[1] if pos is not None else 0
    if n and int(round((n - 1) ** 0.5)) ** 2 == n - 1 and int(round(n ** 0.5)) ** 2 != n:
      p["cls"], pos = p["cls"] + pos[:, :1], pos[:, 1:]  # timm's cls slot
  if model.get("posemb", "learn") not in ("sincos2d", "none"):
    p["pos_embedding"] = s["pos_embed"] if pos is None else pos
  t = {}
  for i in range(depth):
    pre = f"blocks.{i}."
    qkv_w, qkv_b = s[pre + "attn.qkv.weight"].T, s[pre + "attn.qkv.bias"]
    attn = {k: {"kernel": qkv_w[:, j * d:(j + 1) * d].reshape(d, heads, d // heads),
                "bias": qkv_b[j * d:(j + 1) * d].reshape(heads, d // heads)}
            for j, k in enumerate(("query", "key", "value"))}
    attn["out"] = {"kernel": s[pre + "attn.proj.weight"].T.reshape(heads, d // heads, d),
                   "bias": s[pre + "attn.proj.bias"]}
    t[f"encoderblock_{i}"] = {
        "MultiHeadDotProductAttention_0": attn,
        "LayerNorm_0": s.layer(pre + "norm1", "norm"),
        "LayerNorm_1": s.layer(pre + "norm2", "norm"),
        "MlpBlock_0": {"Dense_0": s.layer(pre + "mlp.fc1", "dense"),
                       "Dense_1": s.layer(pre + "mlp.fc2", "dense")}}
  t["encoder_norm"] = s.layer("norm", "norm")
  p["Transformer"] = t
  return p
