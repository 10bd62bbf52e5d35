"""Downstream use of a checkpoint: fine-tuning (layer decay, mixup/cutmix, label
smoothing, gradient accumulation), loading (head swap, position-embedding
interpolation, mismatch errors), linear probing, kNN and the Python API."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import checkpoints, errors, mixing, optim, pretrained, train, transfer, trees
from ebm_pretrain import validate
from ebm_pretrain.evaluators.knn import knn_predict
from ebm_pretrain.models import loading, vit
from ebm_pretrain.objectives.supervised import SupervisedObjective
from ebm_pretrain.data import randaug
from helpers import (assert_trees_close, fake_idx_dir, latest_params, load_config, run_main,
                     train_inprocess)

DUMMY = jnp.zeros((1, 16, 16, 3))


# -- Layer-wise lr decay --------------------------------------------------------
def test_layer_decay_multiplier_of_each_block():
  c = load_config("tiny_finetune")  # ViT-mu: 2 blocks -> layers 0 (embeddings) .. 3 (head)
  c.init = "a/pretraining"  # layer decay applies to a loaded backbone only
  obj = SupervisedObjective(c)
  params = obj.init(jax.random.PRNGKey(0), DUMMY)
  flat = {trees.path_str(p): f for p, f in
          jax.tree_util.tree_leaves_with_path(obj.lr_multipliers(params))}
  d = c.layer_decay
  assert flat["backbone/embedding/kernel"] == pytest.approx(d ** 3)
  assert flat["backbone/pos_embedding"] == pytest.approx(d ** 3)
  assert flat["backbone/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"] == pytest.approx(d ** 2)
  assert flat["backbone/Transformer/encoderblock_1/LayerNorm_0/scale"] == pytest.approx(d)
  assert flat["backbone/Transformer/encoder_norm/scale"] == 1.0
  assert flat["head/dense/kernel"] == 1.0


def test_scratch_training_applies_no_layer_decay():
  c = load_config("tiny_finetune")
  assert c.layer_decay == 0.75 and not c.init
  obj = SupervisedObjective(c)
  assert obj.lr_multipliers(obj.init(jax.random.PRNGKey(0), DUMMY)) is None
  assert load_config("demo_finetune").layer_decay == 0.75  # kept for the pretrained runs


@pytest.mark.parametrize("config", ["tiny_finetune", "tiny_seg"])
@pytest.mark.parametrize("decay", [0.0, 1.5])
def test_layer_decay_outside_0_1_is_refused(config, decay):
  c = load_config(config)
  c.layer_decay = decay
  with pytest.raises(errors.ConfigError, match=r"config.layer_decay: must be in \(0, 1\]"):
    validate.validate(c, num_devices=1)


def test_layer_decay_scales_each_update_by_its_multiplier():
  c = load_config("tiny_finetune")
  c.init = "a/pretraining"
  flat_c = c.copy_and_resolve_references()
  flat_c.layer_decay = 1.0
  obj, flat_obj = SupervisedObjective(c), SupervisedObjective(flat_c)
  params = obj.init(jax.random.PRNGKey(0), DUMMY)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  schedule = lambda step: 1e-2

  def update(objective, config):
    tx = optim.make_optimizer(config, params, objective, schedule)
    return tx.update(grads, tx.init(params), params)[0]
  decayed, plain = update(obj, c), update(flat_obj, flat_c)
  factors = obj.lr_multipliers(params)
  for (path, u), v, f in zip(jax.tree_util.tree_leaves_with_path(decayed),
                             jax.tree.leaves(plain), jax.tree.leaves(factors)):
    np.testing.assert_allclose(u, f * v, rtol=1e-6, err_msg=trees.path_str(path))


# -- Mixup, CutMix, label smoothing ---------------------------------------------
def test_label_smoothing():
  t = mixing.smooth_labels(jnp.array([3, 0]), 10, 0.1)
  np.testing.assert_allclose(t[0, 3], 0.91, rtol=1e-6)
  np.testing.assert_allclose(np.delete(np.asarray(t[0]), 3), 0.01, rtol=1e-6)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_match_the_images(mixup_alpha, cutmix_alpha):
  x = jax.random.uniform(jax.random.PRNGKey(0), (6, 12, 12, 3))
  labels = jnp.array([0, 1, 2, 3, 4, 5])
  for seed in range(8):
    mixed, targets, lam = mixing.mixup_cutmix(
        jax.random.PRNGKey(seed), x, labels, num_classes=6, mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha, smoothing=0.1)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
    # Each row's target is lam on its own class and 1 - lam on the flipped one.
    smooth = mixing.smooth_labels(labels, 6, 0.1)
    np.testing.assert_allclose(targets, lam * smooth + (1 - lam) * smooth[::-1], atol=1e-6)
    # The image is made of the same proportions: lam of the original.
    w = (mixed - x[::-1]) / (x - x[::-1])  # per-pixel weight of the original
    np.testing.assert_allclose(float(jnp.mean(w)), float(lam), atol=1e-4)
    if mixup_alpha == 0.0:  # cutmix: every pixel is wholly one image or the other
      assert np.all((np.abs(w - 1) < 1e-4) | (np.abs(w) < 1e-4))


# -- RandAugment --------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_keeps_shape_and_is_seeded(channels):
  img = np.random.default_rng(0).integers(0, 256, (20, 20, channels), dtype=np.uint8)
  outs = [randaug.rand_augment(img, np.random.default_rng(s), num_ops=2, magnitude=9)
          for s in range(10)]
  assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
  again = randaug.rand_augment(img, np.random.default_rng(3), num_ops=2, magnitude=9)
  np.testing.assert_array_equal(again, outs[3])
  assert sum(not np.array_equal(o, img) for o in outs) >= 5
  for name, op in randaug.OPS.items():  # every op runs on gray and colour images
    out = op(randaug.Image.fromarray(img[..., 0] if channels == 1 else img), 0.9,
             np.random.default_rng(0))
    assert out.size == (20, 20), name


# -- Gradient accumulation ------------------------------------------------------
def test_gradient_accumulation_equals_one_big_batch():
  c = load_config("tiny_finetune")
  c.mixup.mixup_alpha = c.mixup.cutmix_alpha = 0.0
  c.model.drop_path = 0.0
  obj = SupervisedObjective(c)
  params = obj.init(jax.random.PRNGKey(0), DUMMY)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 4, 8), jnp.int32),
           "valid": jnp.ones((8,), bool)}
  key = jax.random.PRNGKey(1)
  loss1, m1, _, g1 = train.accumulate_gradients(obj.value_and_grad, params, {}, batch, key, 1)
  loss4, m4, _, g4 = train.accumulate_gradients(obj.value_and_grad, params, {}, batch, key, 4)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  assert_trees_close(g4, g1, rtol=1e-4, atol=1e-7)


def test_grad_accum_must_split_the_batch_evenly():
  c = load_config("tiny_finetune")
  c.grad_accum_steps = 3
  with pytest.raises(errors.ConfigError, match="config.grad_accum_steps"):
    validate.validate(c, num_devices=1)


# -- Loading a checkpoint -------------------------------------------------------
def test_posemb_interpolation_keeps_the_grid():
  yy, xx = np.mgrid[:4, :4].astype(np.float32)
  pe = np.stack([yy, xx, yy + 2 * xx], -1).reshape(1, 16, 3)
  np.testing.assert_array_equal(vit.interpolate_posemb(pe, (4, 4)), pe)
  out = vit.interpolate_posemb(pe, (8, 8)).reshape(8, 8, 3)
  # Rows stay rows and columns stay columns: channel 0 varies only down the
  # grid, channel 1 only across, both increasing, spanning the same range.
  assert np.all(np.diff(out[..., 0], axis=0) > 0) and np.allclose(np.diff(out[..., 0], axis=1), 0, atol=1e-5)
  assert np.all(np.diff(out[..., 1], axis=1) > 0) and np.allclose(np.diff(out[..., 1], axis=0), 0, atol=1e-5)
  np.testing.assert_allclose(out[..., 2], out[..., 0] + 2 * out[..., 1], atol=1e-4)
  assert out[0, 0, 0] < 0.5 and out[-1, -1, 0] > 2.5


def test_fine_tuning_init_takes_the_pretrained_backbone_and_a_fresh_head(tiny_pretrain):
  _, state = latest_params(tiny_pretrain)
  pre = state["params"]["model"]["backbone"]
  c = load_config("tiny_finetune")
  c.data.image_size = 32  # another resolution: 8x8 patches instead of 4x4
  obj = SupervisedObjective(c)
  fresh = jax.device_get(obj.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  logs = []
  params = obj.init_from(fresh, tiny_pretrain, log=logs.append)
  assert params["head"] is fresh["head"] and "energy_head" not in str(jax.tree_util.tree_structure(params))
  got = dict(params["backbone"])
  assert got["pos_embedding"].shape == (1, 64, 32)
  np.testing.assert_allclose(got.pop("pos_embedding"), vit.interpolate_posemb(
      pre["pos_embedding"], (8, 8)), rtol=1e-6)
  want = {k: v for k, v in pre.items() if k not in ("pos_embedding", "cls")}  # gap: no cls
  assert_trees_close(got, want, rtol=0, atol=0)
  assert "Not used from the checkpoint: cls" in logs


def test_mismatched_checkpoint_lists_every_path(tiny_pretrain):
  c = load_config("tiny_finetune")
  c.model.variant = "nano/4"
  with pytest.raises(checkpoints.CheckpointError, match="holds a vit mu/4 backbone; this config builds vit nano/4"):
    SupervisedObjective(c).init_from({"backbone": {}}, tiny_pretrain)
  target = {"embedding": {"kernel": np.zeros((4, 4, 3, 64))}, "extra": np.zeros(3),
            "Transformer": {"encoder_norm": {"scale": np.zeros(64)}}}
  loaded = {"embedding": {"kernel": np.zeros((4, 4, 3, 32))}, "old": np.zeros(3),
            "Transformer": {"encoder_norm": {"scale": np.zeros(32)}}}
  with pytest.raises(checkpoints.CheckpointError) as e:
    loading.match(target, loaded)
  msg = str(e.value)
  for line in ("embedding/kernel: checkpoint (4, 4, 3, 32), model (4, 4, 3, 64)",
               "Transformer/encoder_norm/scale: checkpoint (32,), model (64,)",
               "in the model, not in the checkpoint:\n  extra",
               "in the checkpoint, not in the model:\n  old"):
    assert line in msg


def test_fixed_sincos_checkpoint_needs_trainable_sincos_to_fine_tune(tmp_path):
  wd = str(tmp_path / "sincos")
  train_inprocess("tiny", wd, total_steps=2, eval_examples=0, **{"model.posemb": "sincos2d"})
  c = load_config("tiny_finetune")
  obj = SupervisedObjective(c)
  with pytest.raises(checkpoints.CheckpointError, match="posemb=sincos2d_learn"):
    obj.init_from(jax.device_get(obj.init(jax.random.PRNGKey(0), DUMMY)), wd)
  c.model.posemb = "sincos2d_learn"
  obj = SupervisedObjective(c)
  params = obj.init_from(jax.device_get(obj.init(jax.random.PRNGKey(0), DUMMY)), wd, log=len)
  from ebm_pretrain.models import posemb_sincos_2d
  np.testing.assert_allclose(params["backbone"]["pos_embedding"], posemb_sincos_2d(4, 4, 32),
                             atol=1e-6)


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at .*does not exist"):
    pretrained.load(str(tmp_path / "nothing"))
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at .*expected a workdir"):
    pretrained.load(str(tmp_path))
  proc = run_main("configs/tiny_finetune.py", str(tmp_path / "ft"),
                  f"--config.init={tmp_path}", check=False)
  assert proc.returncode == 2 and "no checkpoint at" in proc.stderr
  assert "Traceback" not in proc.stderr


# -- End to end ----------------------------------------------------------------
def test_fine_tune_two_steps_end_to_end(tmp_path, tiny_pretrain, capsys):
  wd = str(tmp_path / "ft")
  train_inprocess("tiny_finetune", wd, init=tiny_pretrain, total_steps=2)
  out = capsys.readouterr().out
  assert "Initialised the backbone from" in out
  assert "Eval at step 2: eval/top1" in out
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert any("eval/top1" in r for r in records) and any("accuracy" in r for r in records)
  assert os.path.isdir(os.path.join(wd, "checkpoints", "2"))
  assert os.path.isdir(os.path.join(wd, "best", "2"))  # best/ holds the best step
  model = pretrained.load(os.path.join(wd, "best"))
  assert model.logits(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 4)


def test_linear_probe_trains_only_the_head(tmp_path, tiny_pretrain):
  wd = str(tmp_path / "lin")
  train_inprocess("tiny_finetune:linprobe=True", wd, init=tiny_pretrain, total_steps=2)
  _, pre = latest_params(tiny_pretrain)
  _, post = latest_params(wd)
  assert_trees_close(post["params"]["backbone"], pre["params"]["model"]["backbone"], rtol=0, atol=0)
  stats = post["model_state"]["batch_stats"]["norm"]
  assert np.any(stats["mean"] != 0) and np.any(stats["var"] != 1)  # BatchNorm saw the features
  assert set(post["params"]["head"]) == {"dense"}  # the BatchNorm has no affine parameters


def test_pretrained_api_on_a_demo_checkpoint(tmp_path):
  wd = str(tmp_path / "demo")  # the demo's model, on IDX files of its own (nothing in ~)
  train_inprocess("demo:steps=2", wd, eval_examples=0, batch_size=16,
                  **{"data.idx_dir": str(fake_idx_dir(tmp_path / "idx")),
                     "data.data_dir": str(tmp_path / "tfds")})
  model = pretrained.load(wd)
  assert model.config.model.variant == "nano/7" and model.step == 2
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  f = model.features(images)
  assert f.shape == (3, 128) and np.all(np.isfinite(f))
  np.testing.assert_allclose(model.features(images / 255.0), f, rtol=1e-5, atol=1e-5)
  assert model.energy(images).shape == (3,)
  chain = model.restore(images, num_steps=3)
  assert chain.shape == (3, 3, 28, 28, 1) and float(chain.min()) >= 0 and float(chain.max()) <= 1
  # The same chain as the training code's restore, in pixel space.
  from ebm_pretrain import energy
  x = (images / 255.0 - 0.2860) / 0.3530
  want = energy.restore(model.objective.energy_fn, model.params["model"], jnp.asarray(x, jnp.float32),
                        model.objective.alpha(model.params), 3)
  np.testing.assert_allclose(chain, np.clip(want * 0.3530 + 0.2860, 0, 1), atol=1e-5)
  with pytest.raises(ValueError, match=r"images must be \[B, H, W, 1\].*got shape \(3, 28, 28\)"):
    model.features(images[..., 0])
  assert model.capabilities() == ["corrupt", "energy", "features", "restore"]
  with pytest.raises(pretrained.CapabilityError,
                     match=r"logits\(\) needs a model that offers 'logits'; .* holds a model of "
                           r"the 'energy' objective, which offers corrupt, energy, features, "
                           r"restore$"):
    model.logits(images)


# -- kNN ------------------------------------------------------------------------
def test_knn_separable_features_are_all_right():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16)) * 10
  train_y = rng.integers(0, 5, 500)
  test_y = rng.integers(0, 5, 200)
  train_x = centres[train_y] + rng.normal(size=(500, 16))
  test_x = centres[test_y] + rng.normal(size=(200, 16))
  pred = knn_predict(train_x, train_y, test_x, num_classes=5, k=20, temperature=0.07, chunk=64)
  assert np.mean(pred == test_y) == 1.0
  # and chance on random labels
  pred = knn_predict(train_x, rng.permutation(train_y), test_x, num_classes=5)
  assert np.mean(pred == test_y) < 0.5


# -- Configs --------------------------------------------------------------------
def test_finetune_configs_follow_the_paper():
  for name, variant, epochs in [("finetune_vit_s", "S/16", 200), ("finetune_vit_b", "B/16", 100),
                                ("finetune_vit_l", "L/16", 50)]:
    c = load_config(name)
    validate.validate(c, num_devices=8)
    assert c.model.variant == variant and c.total_epochs == epochs
    o = c.optim
    assert (o.name, o.base_lr, o.lr_base_batch, o.b1, o.b2, o.weight_decay) == (
        "adamw", 1e-3, 256, 0.9, 0.999, 0.05)
    assert (c.batch_size, c.layer_decay, c.model.drop_path, c.label_smoothing) == (1024, 0.75, 0.1, 0.1)
    assert (c.mixup.mixup_alpha, c.mixup.cutmix_alpha) == (0.8, 1.0)
    assert (c.augment.randaug_ops, c.augment.randaug_magnitude, c.augment.randaug_std) == (2, 9.0, 0.5)
    assert (c.data.image_size, c.data.eval_resize, c.best_metric) == (224, 256, "eval/top1")
  c = load_config("finetune_vit_b", "init=/runs/pre,pool=tok")
  assert c.init == "/runs/pre" and c.model.pool == "tok"
  lp = load_config("linprobe_vit_b")
  validate.validate(lp, num_devices=8)
  assert lp.freeze_backbone and lp.head_batchnorm and lp.optim.name == "lars"
  assert lp.mixup.mixup_alpha == lp.mixup.cutmix_alpha == 0 and lp.augment.randaug_ops == 0
  for name in ("demo_finetune", "tiny_finetune"):
    validate.validate(load_config(name), num_devices=1)
  probe = load_config("demo_finetune", "linprobe=True")
  validate.validate(probe, num_devices=1)
  assert probe.freeze_backbone and probe.head_batchnorm and probe.optim.weight_decay == 0


def test_scratch_configs_follow_maes_scratch_recipe():
  for name, variant, epochs in [("scratch_vit_s", "S/16", 300), ("scratch_vit_b", "B/16", 300),
                                ("scratch_vit_l", "L/16", 200)]:
    c = load_config(name)
    validate.validate(c, num_devices=8)
    assert not c.init and c.model.variant == variant and c.total_epochs == epochs
    o = c.optim
    assert (o.base_lr, o.b1, o.b2, o.weight_decay, o.warmup_epochs) == (1e-4, 0.9, 0.95, 0.3, 20)
    assert (c.batch_size, c.ema_decay, c.model.drop_path, c.label_smoothing) == (
        4096, 0.9999, 0.1, 0.1)
    assert SupervisedObjective(c).lr_multipliers({}) is None  # no layer decay


# -- Parameter moving average (ema_decay) ------------------------------------------
def test_ema_update_of_one_train_step():
  c = load_config("tiny_finetune")
  obj = SupervisedObjective(c)
  params = obj.init(jax.random.PRNGKey(0), DUMMY)
  schedule = lambda step: 1e-2
  tx = optim.make_optimizer(c, params, obj, schedule)
  ema = jax.tree.map(lambda p: p + 1.0, params)  # apart from the parameters
  state = {"params": params, "model_state": {}, "opt": tx.init(params),
           "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(1), "ema": ema}
  batch = {"image": jnp.full((4, 16, 16, 3), 128, jnp.uint8), "label": jnp.arange(4),
           "valid": jnp.ones((4,), bool)}
  d = c.data
  new, _ = jax.jit(train.make_train_step(obj, tx, schedule, d.mean, d.std, ema_decay=0.75))(
      state, batch)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new["params"], params)
  assert max(jax.tree.leaves(moved)) > 0
  assert_trees_close(new["ema"], jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, ema,
                                              new["params"]))
  plain, _ = jax.jit(train.make_train_step(obj, tx, schedule, d.mean, d.std))(
      {k: v for k, v in state.items() if k != "ema"}, batch)
  assert "ema" not in plain
  assert_trees_close(plain["params"], new["params"])  # the average never feeds back


def test_ema_run_delivers_the_average(tmp_path):
  wd = str(tmp_path / "ema")
  state, _ = train_inprocess("tiny_finetune:steps=3", wd, ema_decay=0.5, eval_examples=0)
  _, saved = latest_params(wd)
  assert set(saved) >= {"params", "ema"}
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), saved["ema"], saved["params"])
  assert max(jax.tree.leaves(diff)) > 0
  assert_trees_close(pretrained.load(wd).params, saved["ema"])
  assert_trees_close(checkpoints.restore_params(checkpoints.find(wd)), saved["ema"])
  bad = load_config("tiny_finetune")
  bad.ema_decay = 1.0
  with pytest.raises(errors.ConfigError, match="ema_decay"):
    validate.validate(bad, num_devices=1)


def test_vit_recipes_take_any_familys_checkpoint_when_asked(tmp_path):
  """finetune_vit_* / linprobe_vit_* with model=from_init: the checkpoint's
  backbone (a ConvNeXt here) through the family's fine-tuning hook, or as it
  was trained for a linear probe; the recipe otherwise unchanged."""
  pre = str(tmp_path / "convnext")
  train_inprocess("tiny:model=convnext,steps=1", pre, eval_examples=0)
  for name in ("finetune_vit_b", "linprobe_vit_b"):
    c = transfer.resolve_model(load_config(name, f"init={pre},model=from_init"))
    assert (c.model.name, c.model.variant) == ("convnext", "mu")
    plain = load_config(name)
    assert (c.optim.name, c.optim.base_lr, c.batch_size) == (
        plain.optim.name, plain.optim.base_lr, plain.batch_size)
    assert c.model.drop_path == (0.0 if c.freeze_backbone else 0.1)
  with pytest.raises(errors.ConfigError, match="model='swin'"):
    load_config("finetune_vit_b", "model=swin")
