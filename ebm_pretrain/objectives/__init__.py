"""Objectives, picked by ``config.objective`` from one registry (as big_vision
picks its loss); the trainer's loop, sharding, checkpointing and metrics are
shared. The protocol and the defaults every objective gets: ``base.py``.

Add one in its own file: subclass ``base.Base`` and call
``objectives.register("name", YourObjective)`` (docs/extending.md).
"""
from __future__ import annotations

from ebm_pretrain.objectives.base import Base, Objective, model_kwargs
from ebm_pretrain.registry import Registry

_REGISTRY = Registry("objective", {
    "energy": "ebm_pretrain.objectives.restoration:EnergyObjective",
    "sorting": "ebm_pretrain.objectives.sorting:SortingObjective",
    "contrastive": "ebm_pretrain.objectives.contrastive:ContrastiveObjective",
    "autoencoder": "ebm_pretrain.objectives.autoencoders:PixelAutoencoder",
    "ae_sorting": "ebm_pretrain.objectives.autoencoders:SortingAutoencoder",
    "mae": "ebm_pretrain.objectives.autoencoders:MAEObjective",
    "supervised": "ebm_pretrain.objectives.supervised:SupervisedObjective",
    "segmentation": "ebm_pretrain.objectives.segmentation:SegmentationObjective",
})


def register(name: str, cls) -> None:
  """Makes ``config.objective = name`` build ``cls(config)``."""
  _REGISTRY.register(name, cls)


def names() -> list[str]:
  return _REGISTRY.names()


def plugin_module(name: str) -> str | None:
  """The module outside the package that registered the objective ``name``."""
  return _REGISTRY.plugin_module(name)


def get_class(name: str):
  return _REGISTRY.get(name)


def get(config) -> Objective:
  """The objective ``config.objective`` names, built for ``config``."""
  return get_class(config.objective)(config)


__all__ = ["Base", "Objective", "get", "get_class", "model_kwargs", "names", "plugin_module",
           "register"]
