"""docs/extending.md: a pixel task, an objective and an evaluator added from
outside the package, one file each (tests/plugins/), each run two steps."""
import importlib.util
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from ebm_pretrain import corruptions, recipes, train
from helpers import ROOT, cli_env, load_config


def _plugin(name):
  path = os.path.join(ROOT, "tests", "plugins", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"plugin_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny(**kw):
  c = load_config("tiny", "steps=2")
  c.image_every = c.checkpoint_every = 10
  for key, value in kw.items():  # (replaced, not merged as ConfigDict.update would)
    c[key] = value
  return c


def _train(c, workdir):
  return train.train_and_evaluate(c, workdir, devices=jax.devices()[:1])


def _metrics(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_a_pixel_task_in_one_file(tmp_path):
  _plugin("quantize_task")
  c = _tiny(task="quantize", task_kwargs=ml_collections.ConfigDict(dict(levels=3)))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  q = corruptions.from_spec("quantize", levels=3, mean=(0.0,), std=(1.0,))(jax.random.key(1), x)
  assert len(np.unique(np.round(np.asarray(q), 6))) == 3
  _, last = _train(c, str(tmp_path))
  assert np.isfinite(last["loss"]) and last["eval/psnr_corrupted"] > 0
  assert {"step_error_1", "step_error_2"} <= set(last)


def test_an_objective_in_one_file_pretrains_and_fine_tunes(tmp_path, capsys):
  _plugin("rotation_objective")
  c = _tiny()
  recipes.set_objective(c, "rotation")
  state, last = _train(c, str(tmp_path / "pre"))
  assert set(state["params"]) == {"backbone", "head"}
  assert 0 <= last["rotation_accuracy"] <= 1 and np.isfinite(last["loss"])
  assert "rotation_accuracy" in capsys.readouterr().out  # its console metrics
  # Fine-tuning takes its backbone (Base.backbone_path) like any pretraining's.
  ft = load_config("tiny_finetune", f"init={tmp_path / 'pre'},steps=2")
  _train(ft, str(tmp_path / "ft"))
  assert "Initialised the backbone from" in capsys.readouterr().out


def test_a_plugin_objectives_checkpoint_is_used_by_capability_in_a_fresh_process(tmp_path):
  """Pretrained with the rotation plug-in (imported as a user would); then in a new
  process: refused in one line naming the module to import, and once it is
  imported (``plugins=``), its logits and features work, what it does not offer is
  a one-line CapabilityError, and export takes the backbone alone, saying so."""
  import subprocess
  import sys
  plugins = os.path.join(ROOT, "tests", "plugins")
  sys.path.insert(0, plugins)
  try:
    import rotation_objective  # noqa: F401  (registers "rotation" from its own module)
  finally:
    sys.path.remove(plugins)
  c = _tiny()
  recipes.set_objective(c, "rotation")
  wd = str(tmp_path / "rot")
  _train(c, wd)
  assert json.load(open(os.path.join(wd, "objective.json"))) == dict(
      objective="rotation", module="rotation_objective")
  code = f"""
import sys, numpy as np
from ebm_pretrain import export, pretrained
from ebm_pretrain.errors import CheckpointError
try:
  pretrained.load({wd!r})
except CheckpointError as e:
  print("REFUSED", e)
sys.path.insert(0, {plugins!r})
m = pretrained.load({wd!r}, plugins=["rotation_objective"])
x = np.zeros((2, 16, 16, 3), np.uint8)
print("CAPS", m.capabilities(), m.logits(x).shape, m.features(x).shape)
try:
  m.energy(x)
except pretrained.CapabilityError as e:
  print("CAPABILITY", e)
print("HEAD", export.export({wd!r}, {str(tmp_path / "timm")!r}, plugins=["rotation_objective"])["head"])
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(1),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
             if line.split(" ", 1)[0] in ("REFUSED", "CAPS", "CAPABILITY", "HEAD"))
  assert out["REFUSED"] == (
      f"{wd} holds a 'rotation' model, an objective registered by the module "
      "'rotation_objective': import it first (or pass plugins=['rotation_objective']; "
      "--plugin=rotation_objective on the command lines)")
  assert out["CAPS"] == "['features', 'logits'] (2, 4) (2, 32)"  # 4 rotations; mu/4 width 32
  assert out["CAPABILITY"] == (f"energy() needs a model that offers 'energy'; {wd} holds a model "
                               "of the 'rotation' objective, which offers features, logits")
  assert out["HEAD"] == "False"


def test_an_evaluator_in_one_file_runs_when_listed(tmp_path):
  _plugin("energy_gap_evaluator")
  c = _tiny(evals=ml_collections.ConfigDict({"gap": dict(type="energy_gap", every=1),
                                             "psnr": dict(type="psnr", every=0)}))
  _train(c, str(tmp_path))
  evals = {m["step"]: m for m in _metrics(str(tmp_path)) if "eval/gap" in m}
  assert sorted(evals) == [1, 2]  # every step, and the last
  assert "eval/psnr_step_2" in evals[2] and "eval/psnr_step_2" not in evals[1]


def test_an_evaluator_that_cannot_work_is_a_config_error(tmp_path):
  from ebm_pretrain import errors, validate
  c = _tiny(evals=ml_collections.ConfigDict({"acc": dict(type="top1")}))
  with pytest.raises(errors.ConfigError, match="config.evals.acc: top1 needs objective=supervised"):
    validate.validate(c, num_devices=1)
  c = _tiny(evals=ml_collections.ConfigDict({"k": dict(type="knn", neighbours=5)}))
  with pytest.raises(errors.ConfigError,
                     match=r"config.evals.k: \['neighbours'\]: knn takes block, k, pool,"):
    validate.validate(c, num_devices=1)
