"""The pretraining program: config validation, sharding equivalence, observability,
NaN handling. End-to-end runs use configs/tiny.py (synthetic data, seconds)."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from ebm_pretrain import errors, objectives, optim, train, validate
from helpers import assert_trees_close, latest_params, load_config, run_main


@pytest.mark.parametrize("field,value,message", [
    ("task", "blur", r"config.task: unknown task 'blur'; valid: colorize"),
    ("model.name", "resnet", r"config.model.name: unknown model 'resnet'"),
    ("model.variant", "mu/5", r"config.model.variant: patch size 5 does not divide data.image_size=16"),
    ("batch_size", 12, r"config.batch_size: 12 is not divisible by the number of devices \(8\)"),
    ("inner_steps", 0, r"config.inner_steps: must be an int >= 1"),
    ("eval_batch_size", 12, r"config.eval_batch_size: 12 is not divisible by the number of devices"),
    ("task_kwargs.ratio", 1.5, r"config.task_kwargs.ratio: must be in \(0, 1\)"),
    ("loss", "l3", r"config.loss: 'l3'; valid: smooth_l1, mse"),
])
def test_invalid_config_names_the_field(field, value, message):
  c = load_config("tiny")
  if field == "task_kwargs.ratio":
    c.task = "mask_grid4"
    c.task_kwargs = {"ratio": value}
  else:
    parent, _, leaf = field.rpartition(".")
    (c[parent] if parent else c)[leaf] = value
  with pytest.raises(errors.ConfigError, match=message):
    validate.validate(c, num_devices=8)


def test_all_configs_are_valid():
  for name, arg in [("vit_s", None), ("vit_b", "task=sr16"), ("vit_l", "task=mask_grid16"),
                    ("demo", None), ("tiny", None)]:
    c = load_config(name, arg)
    validate.validate(c, num_devices=8 if c.batch_size % 8 == 0 else 1)


def test_paper_recipe_in_vit_configs():
  c = load_config("vit_b")
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.base_lr) == (0.9, 0.95, 0.05, 1e-4)
  assert c.batch_size == 256 and c.dtype == "bfloat16" and c.inner_steps == 2
  assert c.alpha.learnable and c.total_epochs == 200
  assert load_config("vit_l").total_epochs == 800
  mask = optim.decay_mask({"model": {"Transformer": {"encoderblock_0": {
      "LayerNorm_0": {"scale": 1, "bias": 1}, "MlpBlock_0": {"Dense_0": {"kernel": 1, "bias": 1}}}},
      "pos_embedding": 1, "cls": 1, "embedding": {"kernel": 1}}, "log_alpha": 1})
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert [k for k, v in flat.items() if v] == [
      "['model']['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']",
      "['model']['embedding']['kernel']"]


def test_eight_devices_equal_one_device(tmp_path):
  assert jax.device_count() == 8
  c = load_config("tiny", "steps=2")
  c.eval_examples = 0
  s8, m8 = train.train_and_evaluate(c, str(tmp_path / "d8"))
  s1, m1 = train.train_and_evaluate(c, str(tmp_path / "d1"), devices=jax.devices()[:1])
  assert len(s8["params"]["model"]["energy_head"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  # atol: parameters whose true gradient is 0 (attention key biases) get Adam
  # updates of float noise; everything else agrees to rounding. Updates are ~5e-4.
  assert_trees_close(jax.device_get(s8["params"]), jax.device_get(s1["params"]), rtol=2e-5, atol=1e-5)
  # The update moved the parameters: the comparison is not between two inits.
  init = objectives.get(c).init(jax.random.split(jax.random.PRNGKey(0), 3)[0],
                                                 np.zeros((1, 16, 16, 3), np.float32))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       jax.device_get(s1["params"]), init)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_cli_run_writes_checkpoint_metrics_tensorboard_and_grids(tmp_path):
  wd = str(tmp_path / "run")
  proc = run_main("configs/tiny.py", wd, num_devices=2)
  assert "Done: step 4" in proc.stdout and "Eval at step 4: eval/psnr_corrupted" in proc.stdout
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [2, 4, 4]  # two log lines, then the eval
  for key in ("loss", "step_error_1", "step_error_2", "alpha", "grad_norm", "img_per_s",
              "epoch", "lr", "corrupted_error", "skipped_images"):
    assert key in records[0], key
  assert "eval/psnr_step_2" in records[-1]
  assert glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
  grids = sorted(glob.glob(os.path.join(wd, "images", "restoration_*.png")))
  assert [os.path.basename(g) for g in grids] == ["restoration_00000002.png", "restoration_00000004.png"]
  from PIL import Image
  from ebm_pretrain import pictures
  w, h = Image.open(grids[-1]).size  # 4 columns (corrupted, 2 steps, original), 4 rows; 16 -> 96 px
  pad = pictures.PAD
  assert (w, h) == (pad + 4 * (96 + pad), pictures.HEADER + pad + 4 * (96 + pad))
  assert json.load(open(os.path.join(wd, "config.json")))["model"]["variant"] == "mu/4"
  step, state = latest_params(wd)
  assert step == 4 and int(state["step"]) == 4


def test_the_metric_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch wherever it is installed (timm's, for the
  export): a run's start-up does not pay for that, and torch still imports
  afterwards."""
  import subprocess
  import sys

  from helpers import ROOT, cli_env
  code = ("import importlib.util, sys\n"
          "from ebm_pretrain import metrics\n"
          "w = metrics.MetricWriter(sys.argv[1])\n"
          "w.scalars(1, {'loss': 0.5})\n"
          "w.flush()\n"
          "print('torch' in sys.modules)\n"
          "if importlib.util.find_spec('torch') is not None:\n"
          "  import torch\n"
          "  print(float(torch.ones(2).sum()))\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=cli_env(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[0] == "False", proc.stdout
  assert proc.stdout.split()[1:] in ([], ["2.0"])
  assert glob.glob(str(tmp_path / "tensorboard" / "events*"))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  c = load_config("tiny", "steps=6")
  c.checkpoint_every = 1
  c.optim.base_lr = 1e8  # diverges within a few steps
  c.optim.warmup_steps = 0
  with pytest.raises(train.NonFiniteLossError, match="loss is (nan|inf) at step"):
    train.train_and_evaluate(c, wd, devices=jax.devices()[:1])
  step, state = latest_params(wd)
  assert 1 <= step < 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_missing_imagenet_gives_instructions_without_traceback(tmp_path):
  proc = run_main("configs/vit_b.py", str(tmp_path / "wd"), f"--config.data.data_dir={tmp_path}/tfds",
                  check=False, timeout=120)
  assert proc.returncode == 2
  assert "imagenet2012" in proc.stderr and "tfds build imagenet2012" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_invalid_cli_override_fails_before_compiling(tmp_path):
  proc = run_main("configs/tiny.py", str(tmp_path / "wd"), "--config.inner_steps=0", check=False,
                  timeout=120)
  assert proc.returncode == 2 and "config.inner_steps" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")
