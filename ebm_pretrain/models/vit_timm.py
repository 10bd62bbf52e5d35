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


def _linear(dense: dict) -> tuple[np.ndarray, np.ndarray]:
  return np.asarray(dense["kernel"]).T, np.asarray(dense["bias"])


def to_timm(params: dict, model: dict, image_size: int, channels: int
            ) -> tuple[str, dict, dict[str, np.ndarray]]:
  """(timm name, kwargs, state dict) of ViT backbone ``params``."""
  name, kwargs = timm_kwargs(model, image_size, channels)
  cfg = decode_variant(model["variant"])
  d, grid = cfg["width"], image_size // cfg["patch_size"]
  sd = {"patch_embed.proj.weight": np.asarray(params["embedding"]["kernel"]).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": np.asarray(params["embedding"]["bias"])}
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
    for j, norm in enumerate(("norm1", "norm2")):
      sd[pre + f"{norm}.weight"] = np.asarray(b[f"LayerNorm_{j}"]["scale"])
      sd[pre + f"{norm}.bias"] = np.asarray(b[f"LayerNorm_{j}"]["bias"])
    for j, fc in enumerate(("fc1", "fc2")):
      sd[pre + f"mlp.{fc}.weight"], sd[pre + f"mlp.{fc}.bias"] = _linear(
          b["MlpBlock_0"][f"Dense_{j}"])
  sd["norm.weight"] = np.asarray(t["encoder_norm"]["scale"])
  sd["norm.bias"] = np.asarray(t["encoder_norm"]["bias"])
  return name, kwargs, {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def from_timm(sd: dict[str, np.ndarray], model: dict) -> dict:
  """ViT backbone params for ``model`` (its variant and posemb) from a timm state
  dict: ``to_timm``'s inverse, and timm's own ViTs (a position embedding with a
  cls slot, ``no_embed_class=False``, has that slot added to the cls token).
  The cls token comes when the state has one (a global-pool model drops it when
  loading). CheckpointError names what is missing."""
  cfg = decode_variant(model["variant"])
  d, heads = cfg["width"], cfg["num_heads"]

  def get(key):
    if key not in sd:
      raise CheckpointError(f"the timm state dict has no {key!r} (a ViT {model['variant']} "
                            f"needs it; it has {len(sd)} entries, e.g. {sorted(sd)[:3]})")
    return np.asarray(sd[key], np.float32)
  if "fc_norm.weight" in sd:
    raise CheckpointError("the timm model normalises after pooling (fc_norm); ours "
                          "normalises the tokens before it: not the same network")
  w = get("patch_embed.proj.weight")
  p = {"embedding": {"kernel": w.transpose(2, 3, 1, 0), "bias": get("patch_embed.proj.bias")}}
  pos = get("pos_embed") if "pos_embed" in sd else None
  if "cls_token" in sd:
    p["cls"] = get("cls_token")
    n = pos.shape[1] if pos is not None else 0
    if n and int(round((n - 1) ** 0.5)) ** 2 == n - 1 and int(round(n ** 0.5)) ** 2 != n:
      p["cls"], pos = p["cls"] + pos[:, :1], pos[:, 1:]  # timm's cls slot
  if model.get("posemb", "learn") not in ("sincos2d", "none"):
    if pos is None:
      raise CheckpointError("the timm state dict has no 'pos_embed'")
    p["pos_embedding"] = pos
  t = {}
  for i in range(cfg["depth"]):
    pre = f"blocks.{i}."
    qkv_w, qkv_b = get(pre + "attn.qkv.weight").T, get(pre + "attn.qkv.bias")
    attn = {k: {"kernel": qkv_w[:, j * d:(j + 1) * d].reshape(d, heads, d // heads),
                "bias": qkv_b[j * d:(j + 1) * d].reshape(heads, d // heads)}
            for j, k in enumerate(("query", "key", "value"))}
    attn["out"] = {"kernel": get(pre + "attn.proj.weight").T.reshape(heads, d // heads, d),
                   "bias": get(pre + "attn.proj.bias")}
    t[f"encoderblock_{i}"] = {
        "MultiHeadDotProductAttention_0": attn,
        "LayerNorm_0": {"scale": get(pre + "norm1.weight"), "bias": get(pre + "norm1.bias")},
        "LayerNorm_1": {"scale": get(pre + "norm2.weight"), "bias": get(pre + "norm2.bias")},
        "MlpBlock_0": {f"Dense_{j}": {"kernel": get(pre + f"mlp.{fc}.weight").T,
                                      "bias": get(pre + f"mlp.{fc}.bias")}
                       for j, fc in enumerate(("fc1", "fc2"))}}
  t["encoder_norm"] = {"scale": get("norm.weight"), "bias": get("norm.bias")}
  p["Transformer"] = t
  return p
