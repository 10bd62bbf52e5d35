"""One config block per objective (ebm_pretrain/schema.py): every config holds
the schema's keys and its objective's block, nothing of another objective's;
stored configs (old checkpoints, study cells) upgrade in one place."""
import glob
import json
import os

import pytest
from helpers import ROOT, load_config

from ebm_pretrain import objectives, schema
from ebm_pretrain.workdir import dotted

ENERGY_KEYS = {"alpha", "inner_steps", "task", "task_kwargs", "loss", "unroll", "decoder",
               "energy_reg"}
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
TASKS = ["mixed", "sr4", "sorting", "ae_sr4", "ae_sorting", "mae", "contrastive_mixed"]


def _check_blocks(c) -> None:
  keys = set(c.keys())
  assert keys == schema.base_keys() | schema.block_keys(c.objective), (
      c.objective, sorted(keys ^ (schema.base_keys() | schema.block_keys(c.objective))))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_holds_the_schema_and_its_objectives_block(name):
  c = load_config(name)
  _check_blocks(c)
  if c.objective in ("supervised", "segmentation"):  # fine-tuning, probing, segmentation
    assert not set(c.keys()) & ENERGY_KEYS, sorted(set(c.keys()) & ENERGY_KEYS)


@pytest.mark.parametrize("task", TASKS)
def test_switching_the_objective_replaces_its_block(task):
  c = load_config("demo", f"task={task}")
  _check_blocks(c)
  assert ("decoder" in c) == (c.objective in ("autoencoder", "ae_sorting", "mae"))
  assert ("alpha" in c) == (c.objective in ("energy", "sorting"))
  if "decoder" in c:  # the demo's small decoder, set because the block has it
    assert c.decoder.width == 64
  if "alpha" in c:
    assert c.alpha.init == 1.0


def test_a_task_for_an_objective_without_one_is_refused():
  from ebm_pretrain.errors import ConfigError
  c = schema.base()
  with pytest.raises(ConfigError, match="objective 'mae' takes no corruption task"):
    schema.set_objective(c, "mae", "sr4")


@pytest.mark.parametrize("name,objective", [("sorting", "sorting"), ("ae_sr4", "autoencoder")])
def test_old_flat_checkpoint_configs_upgrade(name, objective):
  stored = json.load(open(os.path.join(ROOT, "tests", "fixtures", "v1_checkpoints", name,
                                       "config.json")))
  c = schema.upgrade(stored)
  assert c.objective == objective
  _check_blocks(c)  # the flat schema's other keys (decoder for sorting, alpha for ae) dropped
  assert "energy_reg" not in c and ("alpha" in c) == (objective == "sorting")
  objectives.get_class(objective).check(c)
  kept, old = dotted(c.to_dict()), dotted(stored)
  assert {k: kept[k] for k in kept.keys() & old.keys() if kept[k] != old[k]} == {
      k: kept[k] for k in ("objective", "task") if k in kept and kept[k] != old.get(k)}
  assert c.checkpoint_timeout_s == schema.base().checkpoint_timeout_s  # declared since


def test_every_committed_study_cell_config_upgrades():
  cells = [json.load(open(p)) for p in glob.glob(os.path.join(ROOT, "results", "*", "cells",
                                                              "*.json"))]
  configs = [r["config"] for r in cells if "config" in r]
  assert len(configs) > 300
  for stored in configs:
    c = schema.upgrade(stored)
    _check_blocks(c)
    objectives.get_class(c.objective).check(c)
    kept, old = dotted(c.to_dict()), dotted(stored)
    assert all(kept[k] == old[k] for k in kept.keys() & old.keys() if k != "task"), stored
