"""Backbone registry: a config names a family and a variant, this builds it.

A family is one ``Backbone`` record, registered with ``register_backbone``:
``factory(variant, **kwargs)`` returns a Flax module mapping images [B, H, W, C]
to features [B, D] and accepting ``train=`` (``kwargs`` are ``config.model``
without name and variant, plus ``dtype`` and ``param_dtype``). Optional hooks:
``layer_id(path, variant) -> (i, n)`` places a parameter (its "/"-joined path
inside the backbone) at depth i of n for layer-wise lr decay (without one, every
parameter gets the full learning rate); ``finetune(model) -> model`` turns the
``config.model`` dict of a pretraining into the one to fine-tune it with (e.g.
ViT: global pooling, drop path 0.1); ``check(variant, image_size, **options)``
raises ConfigError for options the family cannot take; ``load(target, loaded,
model, log) -> params`` carries a checkpoint's backbone parameters into a fresh
one (default: leaf by leaf, ``loading.match``; ViT resamples position
embeddings); ``timm``, a module with ``to_timm(params, model, image_size,
channels) -> (name, kwargs, state dict)``, ``from_timm(state dict, model) ->
params`` and ``model_of(architecture, kwargs) -> model | None`` (``python -m
ebm_pretrain.export``, ``init=FILE.safetensors``). A new family is one file that
ends in ``register_backbone(...)`` (docs/extending.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from ebm_pretrain.models import (convnext, convnext_timm, loading, swin, swin_timm, vit,
                                 vit_timm)
from ebm_pretrain.models.energy_model import EnergyModel, energy_fn_of
from ebm_pretrain.registry import Registry
from ebm_pretrain.models.vit import ViT, decode_variant, posemb_sincos_2d


@dataclasses.dataclass(frozen=True)
class Backbone:
  factory: Callable[..., nn.Module]
  layer_id: Callable[[str, str], tuple[int, int]] | None = None
  finetune: Callable[[dict], dict] | None = None
  check: Callable[..., None] | None = None
  load: Callable[..., dict] | None = None
  timm: Any = None  # a module with to_timm / from_timm (models/vit_timm.py): export, import


_BACKBONES = Registry("model.name", {}, kind="model")


def register_backbone(name: str, factory: Callable[..., nn.Module],
                      layer_id: Callable[[str, str], tuple[int, int]] | None = None,
                      finetune: Callable[[dict], dict] | None = None,
                      check: Callable[..., None] | None = None,
                      load: Callable[..., dict] | None = None, timm: Any = None) -> None:
  _BACKBONES.register(name, Backbone(factory, layer_id, finetune, check, load, timm),
                      module=getattr(factory, "__module__", ""))


def backbone_names() -> list[str]:
  return _BACKBONES.names()


def _family(name: str) -> Backbone:
  return _BACKBONES.get(name)  # (ConfigError, a ValueError, naming the valid ones)


def get_backbone(name: str, variant: str, **kwargs) -> nn.Module:
  return _family(name).factory(variant=variant, **kwargs)


def get_energy_model(name: str, variant: str, *, dtype, param_dtype, **kwargs) -> EnergyModel:
  backbone = get_backbone(name, variant, dtype=dtype, param_dtype=param_dtype, **kwargs)
  return EnergyModel(backbone, dtype=dtype, param_dtype=param_dtype)


def finetune_model(model: dict) -> dict:
  """The ``config.model`` to fine-tune a backbone pretrained with ``model``."""
  return (_family(model["name"]).finetune or dict)(dict(model))


def layer_id(name: str, variant: str, path: str) -> tuple[int, int]:
  """(i, n): the depth of a backbone parameter for layer-wise lr decay."""
  hook = _family(name).layer_id
  return hook(path, variant) if hook else (0, 0)


def check_options(name: str, variant: str, image_size: int, **options) -> None:
  """The family's own option checks (ConfigError), if it has any."""
  hook = _family(name).check
  if hook:
    hook(variant, image_size, **options)


def load_backbone(model: dict, target: dict, loaded: dict, log=print) -> dict:
  """``target`` (fresh backbone params of ``model``, a ``config.model`` dict) with the
  ``loaded`` ones, through the family's ``load`` hook; CheckpointError if they do
  not fit."""
  hook = _family(model["name"]).load
  if hook:
    return hook(target, loaded, model, log=log)
  return loading.match(target, loaded, log=log)


def timm_mapping(name: str):
  """The family's timm parameter mapping (``to_timm``, ``from_timm``); ValueError
  naming the families that have one."""
  hook = _family(name).timm
  if hook is None:
    have = [n for n in backbone_names() if _family(n).timm is not None]
    raise ValueError(f"model {name!r} has no timm mapping yet; these have: {', '.join(have)}")
  return hook


def model_of_timm(architecture: str, kwargs: dict) -> dict:
  """Our ``config.model`` for a timm architecture + kwargs (an exported
  config.json), from the first family whose mapping recognises it."""
  for name in backbone_names():
    hook = _family(name).timm
    model = hook.model_of(architecture, kwargs) if hook is not None else None
    if model is not None:
      return model
  raise ValueError(f"no family maps the timm architecture {architecture!r}")


def _checked(family, module):
  def factory(variant, **kwargs):
    family.decode_variant(variant)  # fail at build time, naming the variant
    return module(variant=variant, **kwargs)
  return factory


register_backbone("vit", _checked(vit, ViT), vit.layer_id, vit.finetune, vit.check_options,
                  vit.load, vit_timm)
# Drop path as the families' ImageNet-1k recipes for the tiny/small sizes.
register_backbone("convnext", _checked(convnext, convnext.ConvNeXt), convnext.layer_id,
                  lambda m: dict(m, drop_path=0.1), timm=convnext_timm)
register_backbone("swin", _checked(swin, swin.Swin), swin.layer_id,
                  lambda m: dict(m, drop_path=0.2), timm=swin_timm)

__all__ = ["Backbone", "EnergyModel", "ViT", "backbone_names", "check_options", "decode_variant",
           "energy_fn_of", "finetune_model", "get_backbone", "get_energy_model", "layer_id",
           "model_of_timm", "timm_mapping",
           "load_backbone", "posemb_sincos_2d", "register_backbone"]
