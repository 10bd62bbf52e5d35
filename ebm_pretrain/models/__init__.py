"""Backbone registry: a config names a family and a variant, this builds it.

Register your own Flax module with ``register_backbone("name", factory)``, where
``factory(variant, **kwargs)`` returns a module mapping images [B, H, W, C] to
features [B, D] and accepting ``train=``.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from ebm_pretrain.models.energy_model import EnergyModel, energy_fn_of
from ebm_pretrain.models.vit import ViT, decode_variant, posemb_sincos_2d

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str, factory: Callable[..., nn.Module]) -> None:
  _BACKBONES[name] = factory


def backbone_names() -> list[str]:
  return sorted(_BACKBONES)


def get_backbone(name: str, variant: str, **kwargs) -> nn.Module:
  if name not in _BACKBONES:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(backbone_names())}")
  return _BACKBONES[name](variant=variant, **kwargs)


def get_energy_model(name: str, variant: str, *, dtype, param_dtype, **kwargs) -> EnergyModel:
  backbone = get_backbone(name, variant, dtype=dtype, param_dtype=param_dtype, **kwargs)
  return EnergyModel(backbone, dtype=dtype, param_dtype=param_dtype)


def _vit(variant, **kwargs):
  decode_variant(variant)  # fail at build time, naming the variant
  return ViT(variant=variant, **kwargs)


register_backbone("vit", _vit)

__all__ = ["EnergyModel", "ViT", "energy_fn_of", "get_backbone", "get_energy_model",
           "register_backbone", "backbone_names", "decode_variant", "posemb_sincos_2d"]
