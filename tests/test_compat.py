"""Checkpoints written before ``config.objective`` named every objective (their
config.json says ``objective: energy, task: sorting`` / ``task: ae_sr4``;
tests/fixtures/v1_checkpoints, made by commit b8378d7) still load, fine-tune
and resume."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from ebm_pretrain import checkpoints, pretrained, tasks, train, transfer
from helpers import ROOT, load_config

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "v1_checkpoints")


@pytest.fixture
def old_run(tmp_path):
  def copy(name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    return str(dst)
  return copy


@pytest.mark.parametrize("task,objective,new_task", [
    ("sorting", "sorting", ""), ("ae_sorting", "ae_sorting", ""), ("mae", "mae", ""),
    ("ae_sr4", "autoencoder", "sr4"), ("sr4", "energy", "sr4"), ("mixed", "energy", "mixed"),
    ("contrastive_mixed", "contrastive", "mixed")])
def test_old_task_names_translate_in_one_place(task, objective, new_task):
  assert tasks.split(task) == (objective, new_task)
  c = load_config("tiny", f"task={task}")
  # (an objective that corrupts no pixels has no task key: its block has none)
  assert (c.objective, c.get("task", "")) == (objective, new_task)


@pytest.mark.parametrize("name,objective", [("sorting", "sorting"), ("ae_sr4", "autoencoder")])
def test_old_checkpoints_load(name, objective):
  model = pretrained.load(os.path.join(FIXTURES, name))
  assert (model.config.objective, model.step) == (objective, 2)
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  feats = np.asarray(model.features(images))
  assert feats.shape[0] == 3 and np.all(np.isfinite(feats))


@pytest.mark.parametrize("name", ["sorting", "ae_sr4"])
def test_old_checkpoints_fine_tune(name, tmp_path, capsys):
  init = os.path.join(FIXTURES, name)
  ft = load_config("tiny_finetune", f"init={init},steps=2")
  state, last = train.train_and_evaluate(ft, str(tmp_path / "ft"), devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert f"Initialised the backbone from {init}" in out and np.isfinite(last["loss"])
  backbone = transfer.backbone_of(checkpoints.restore_params(checkpoints.find(init)))
  start = transfer.backbone_of(checkpoints.restore_params(
      checkpoints.find(str(tmp_path / "ft" / "checkpoints" / "2"))))
  # Two steps moved the weights a little from the old checkpoint's, no more.
  w0 = backbone["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  w2 = start["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert 0 < np.abs(w2 - w0).max() < 0.05


def test_an_old_run_resumes_under_its_new_names(old_run, capsys):
  wd = old_run("sorting")
  c = load_config("tiny", "task=sorting,steps=4")
  c.keep_checkpoints, c.eval_examples, c.allow_config_change = 1, 0, True
  train.train_and_evaluate(c, wd, devices=jax.devices()[:1])
  assert "Resuming from checkpoint step 2" in capsys.readouterr().out
  assert checkpoints.find(wd).step == 4
  # objective: energy, task: sorting read as objective: sorting, task: "" (no change):
  # the one change recorded is the longer run asked for.
  changes = [json.loads(l) for l in open(os.path.join(wd, "config_changes.jsonl"))]
  assert [c["changes"] for c in changes] == [{"total_steps": [2, 4]}]
