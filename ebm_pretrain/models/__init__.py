"""Backbone registry: a config names a family and a variant, this builds it.

Register your own Flax module with ``register_backbone("name", factory)``, where
``factory(variant, **kwargs)`` returns a module mapping images [B, H, W, C] to
features [B, D] and accepting ``train=``. ``layer_id(path, variant) -> (i, n)``
places a parameter (its "/"-joined path inside the backbone) at depth i of n for
layer-wise lr decay; without one, every parameter gets the full learning rate.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from ebm_pretrain.models.energy_model import EnergyModel, energy_fn_of
from ebm_pretrain.models import vit
from ebm_pretrain.models.vit import ViT, decode_variant, posemb_sincos_2d

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_LAYER_IDS: dict[str, Callable[[str, str], tuple[int, int]]] = {}


def register_backbone(name: str, factory: Callable[..., nn.Module],
                      layer_id: Callable[[str, str], tuple[int, int]] | None = None) -> None:
  _BACKBONES[name] = factory
  if layer_id is not None:
    _LAYER_IDS[name] = layer_id


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


def _vit(variant, **kwargs):
  decode_variant(variant)  # fail at build time, naming the variant
  return ViT(variant=variant, **kwargs)


register_backbone("vit", _vit, vit.layer_id)

__all__ = ["EnergyModel", "ViT", "energy_fn_of", "get_backbone", "get_energy_model",
           "register_backbone", "backbone_names", "layer_id", "decode_variant", "posemb_sincos_2d"]
