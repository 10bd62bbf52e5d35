"""Carrying a pretrained backbone into a new model: from a workdir or a step
folder (``checkpoints``), or a timm file (``--config.init=FILE.safetensors``:
``python -m ebm_pretrain.export``'s, or timm's); and the fine-tuning config that
takes the checkpoint's architecture (``resolve_model``).
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from ebm_pretrain import fs, models
from ebm_pretrain.checkpoints import find, first_line, read_config, restore_params
from ebm_pretrain.errors import CheckpointError, ConfigError


TIMM_SUFFIX = ".safetensors"


def is_timm_file(path: str) -> bool:
  return str(path).endswith(TIMM_SUFFIX)


def read_timm_config(path: str) -> dict:
  """The config.json beside a timm file (architecture, kwargs, input_size): how
  to build the model it holds. CheckpointError if there is none."""
  cfg = fs.path(path).parent / "config.json"
  try:
    out = json.loads(cfg.read_text())
    missing = {"architecture", "kwargs", "input_size"} - set(out)
    if missing:
      raise ValueError(f"it has no {', '.join(sorted(missing))}")
    return out
  except (OSError, ValueError) as e:
    raise CheckpointError(
        f"no usable config.json (architecture, kwargs) beside {path} ({first_line(e)}): name "
        "the model it holds, e.g. --config.model.name=vit --config.model.variant=S/16 "
        "--config.data.image_size=224") from None


def read_timm(path: str) -> dict[str, np.ndarray]:
  """The state dict of a timm safetensors file (numpy; no torch)."""
  from safetensors.numpy import load_file
  try:
    return load_file(os.fspath(fs.path(path)))
  except Exception as e:  # pylint: disable=broad-except  (missing, truncated, not safetensors)
    raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None


def backbone_of(params: dict) -> dict:
  """The backbone parameters of an energy (``model/backbone``) or a fine-tuned
  (``backbone``) checkpoint."""
  if "backbone" in params:
    return params["backbone"]
  if "model" in params and "backbone" in params["model"]:
    return params["model"]["backbone"]
  raise CheckpointError(f"the checkpoint holds no backbone parameters (top-level keys: "
                        f"{sorted(params)})")


def pretrained_backbone(config, target: dict, path: str, log=print) -> dict:
  """``target`` (fresh backbone params of ``config.model``) replaced by the backbone
  of the checkpoint at ``path``, through the family's ``load`` hook
  (``models.load_backbone``); a different model is a CheckpointError. A timm
  file (``.safetensors``) goes through the family's timm mapping first."""
  if is_timm_file(path):
    try:
      loaded = models.timm_mapping(config.model.name).from_timm(read_timm(path),
                                                                config.model.to_dict())
      backbone = models.load_backbone(config.model.to_dict(), target, loaded, log=log)
    except (CheckpointError, ValueError) as e:
      raise CheckpointError(f"{path}: {e}") from None
    log(f"Initialised the backbone from the timm file {path}")
    return backbone
  found = find(path)
  if found.workdir is not None:
    trained = read_config(found).model
    m = config.model
    if (trained.name, trained.variant) != (m.name, m.variant):
      raise CheckpointError(
          f"{path} holds a {trained.name} {trained.variant} backbone; this config builds "
          f"{m.name} {m.variant}. Set --config.model.name={trained.name} "
          f"--config.model.variant={trained.variant}, or point --config.init at a "
          f"{m.name} {m.variant} checkpoint.")
  try:
    backbone = models.load_backbone(config.model.to_dict(), target,
                                    backbone_of(restore_params(found)), log=log)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  log(f"Initialised the backbone from {found.checkpoints_dir} step {found.step}")
  return backbone


# config.model.name when a fine-tuning config takes the checkpoint's backbone.
FROM_INIT = ""


def resolve_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``model`` filled in from the ``init`` checkpoint when the
  config leaves the backbone to it (``model.name == ""``): the checkpoint's
  architecture, made ready for fine-tuning by its family's ``finetune`` hook
  (``models.register_backbone``); for linear probing (``freeze_backbone``) as it
  was trained, so that the probe reads the features pretraining read. Entries
  set in ``config.model`` win."""
  if config.model.name != FROM_INIT:
    return config
  if not config.init:
    raise ConfigError(
        "config.model.name: empty, which means 'the backbone of config.init', but config.init "
        "is empty too: set --config.init=PRETRAINING_WORKDIR, or name a model to train from "
        "scratch (e.g. --config.model.name=vit --config.model.variant=S/16)")
  if is_timm_file(config.init):
    t = read_timm_config(config.init)
    try:
      trained = models.model_of_timm(t["architecture"], t["kwargs"])
    except (ValueError, KeyError) as e:
      raise CheckpointError(f"{config.init}: {e}") from None
  else:
    trained = read_config(find(config.init)).model.to_dict()
  model = (dict(trained) if config.get("freeze_backbone", False)
           else models.finetune_model(trained))
  model.update({k: v for k, v in config.model.to_dict().items() if k != "name"})
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = ml_collections.ConfigDict(model)
  return config
