"""Backbone registry: a config names a family and a variant, this builds it.

Register your own Flax module with ``register_backbone("name", factory)``, where
``factory(variant, **kwargs)`` returns a module mapping images [B, H, W, C] to
features [B, D] and accepting ``train=`` (``kwargs`` are ``config.model`` without
name and variant, plus ``dtype`` and ``param_dtype``). Optional:
``layer_id(path, variant) -> (i, n)`` places a parameter (its "/"-joined path
inside the backbone) at depth i of n for layer-wise lr decay (without one, every
parameter gets the full learning rate); ``finetune(model) -> model`` turns the
``config.model`` dict of a pretraining into the one to fine-tune it with (e.g.
ViT: global pooling, drop path 0.1), for fine-tuning configs that take the
checkpoint's backbone.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from ebm_pretrain.models.energy_model import EnergyModel, energy_fn_of
from ebm_pretrain.models import convnext, swin, vit
from ebm_pretrain.models.vit import ViT, decode_variant, posemb_sincos_2d

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_LAYER_IDS: dict[str, Callable[[str, str], tuple[int, int]]] = {}
_FINETUNE: dict[str, Callable[[dict], dict]] = {}


def register_backbone(name: str, factory: Callable[..., nn.Module],
                      layer_id: Callable[[str, str], tuple[int, int]] | None = None,
                      finetune: Callable[[dict], dict] | None = None) -> None:
  _BACKBONES[name] = factory
  if layer_id is not None:
    _LAYER_IDS[name] = layer_id
  if finetune is not None:
    _FINETUNE[name] = finetune


def finetune_model(model: dict) -> dict:
  """The ``config.model`` to fine-tune a backbone pretrained with ``model``."""
  return _FINETUNE.get(model["name"], dict)(dict(model))


def layer_id(name: str, variant: str, path: str) -> tuple[int, int]:
  """(i, n): the depth of a backbone parameter for layer-wise lr decay."""
  if name not in _LAYER_IDS:
    return 0, 0
  return _LAYER_IDS[name](path, variant)


def backbone_names() -> list[str]:
  return sorted(_BACKBONES)


def get_backbone(name: str, variant: str, **kwargs) -> nn.Module:
  if name not in _BACKBONES:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(backbone_names())}")
  return _BACKBONES[name](variant=variant, **kwargs)


def get_energy_model(name: str, variant: str, *, dtype, param_dtype, **kwargs) -> EnergyModel:
  backbone = get_backbone(name, variant, dtype=dtype, param_dtype=param_dtype, **kwargs)
  return EnergyModel(backbone, dtype=dtype, param_dtype=param_dtype)


def _checked(family, module):
  def factory(variant, **kwargs):
    family.decode_variant(variant)  # fail at build time, naming the variant
    return module(variant=variant, **kwargs)
  return factory


def _vit_finetune(model: dict) -> dict:
  """MAE / paper Table A: global pooling, drop path 0.1; fixed sin-cos position
  embeddings become trainable from their sin-cos values (appendix A.2), and an
  encoder pretrained without any (AE + sorting) gets trainable ones from zeros."""
  posemb = model.get("posemb", "learn")
  posemb = {"sincos2d": "sincos2d_learn", "none": "zeros_learn"}.get(posemb, posemb)
  return dict(model, pool="gap", drop_path=0.1, posemb=posemb)


register_backbone("vit", _checked(vit, ViT), vit.layer_id, _vit_finetune)
# Drop path as the families' ImageNet-1k recipes for the tiny/small sizes.
register_backbone("convnext", _checked(convnext, convnext.ConvNeXt), convnext.layer_id,
                  lambda m: dict(m, drop_path=0.1))
register_backbone("swin", _checked(swin, swin.Swin), swin.layer_id,
                  lambda m: dict(m, drop_path=0.2))

__all__ = ["EnergyModel", "ViT", "energy_fn_of", "get_backbone", "get_energy_model",
           "register_backbone", "backbone_names", "layer_id", "finetune_model", "decode_variant", "posemb_sincos_2d"]
