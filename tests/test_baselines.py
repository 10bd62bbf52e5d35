"""The baselines (ae_<task>, mae) through the same CLI, and fine-tuning from them."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ebm_pretrain import checkpoints, objectives, transfer
from ebm_pretrain.objectives import autoencoders
from helpers import load_config, train_inprocess
from test_learning import structured_images


def _objective(task):
  c = load_config("tiny", f"task={task}")
  return c, objectives.get(c)


def test_mae_masks_75_percent_and_the_encoder_sees_only_the_rest():
  c, obj = _objective("mae")
  assert isinstance(obj, autoencoders.MAEObjective)
  images = structured_images(jax.random.key(0), 4)  # 16px, 4px patches: 16 patches
  params = jax.jit(obj.init)(jax.random.key(1), images)["model"]
  keep = jnp.asarray([[0, 5, 10, 15]] * 4)  # 25% visible
  # Predictions do not depend on the pixels of masked patches.
  grad = jax.jit(jax.grad(lambda x: obj._apply(params, x, keep, False, None).sum()))(images)
  per_patch = np.abs(np.asarray(autoencoders.patchify(grad, 4))).sum(-1)  # [B, 16]
  visible = np.zeros(16, bool)
  visible[[0, 5, 10, 15]] = True
  assert (per_patch[:, ~visible] == 0).all() and (per_patch[:, visible] > 0).all()
  # The default mask ratio keeps 4 of 16 patches.
  assert obj.keep_ratio == pytest.approx(0.25)


def test_mae_loss_covers_only_the_masked_patches():
  patches = jax.random.normal(jax.random.key(0), (2, 16, 12))
  pred = jax.random.normal(jax.random.key(1), (2, 16, 12))
  keep = jnp.asarray([[1, 2, 3, 4], [0, 7, 8, 9]])
  grad = np.asarray(jax.grad(lambda p: autoencoders.mae_loss(p, patches, keep).sum())(pred))
  touched = np.abs(grad).sum(-1) > 0
  for b in range(2):
    expected = np.ones(16, bool)
    expected[np.asarray(keep[b])] = False
    np.testing.assert_array_equal(touched[b], expected)
  # The target is per-patch normalised pixels: predicting them gives zero loss.
  target = (patches - patches.mean(-1, keepdims=True)) / jnp.sqrt(
      patches.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(autoencoders.mae_loss(target, patches, keep), 0.0, atol=1e-10)


def test_patchify_matches_the_vit_token_order():
  x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
  p = autoencoders.patchify(x, 4)
  assert p.shape == (2, 4, 16)
  np.testing.assert_array_equal(p[0, 1], x[0, 0:4, 4:8, 0].reshape(-1))  # row 0, column 1
  np.testing.assert_array_equal(p[0, 2], x[0, 4:8, 0:4, 0].reshape(-1))  # row 1, column 0


def test_ae_sorting_has_no_position_embedding_and_cannot_read_positions():
  c, obj = _objective("ae_sorting")
  assert c.model.posemb == "none"
  images = structured_images(jax.random.key(0), 2)
  params = jax.jit(obj.init)(jax.random.key(1), images)["model"]
  assert "pos_embedding" not in params["backbone"]
  # Permuting the kept tokens permutes the predictions: nothing tells positions apart
  # but the patches' content.
  keep = jnp.asarray([[0, 3, 6, 9, 12, 15, 1, 2]] * 2)
  perm = jnp.asarray([7, 2, 5, 0, 1, 3, 6, 4])
  apply = jax.jit(lambda k: obj._apply(params, images, k, False, None))
  a, b = apply(keep), apply(keep[:, perm])
  np.testing.assert_allclose(a[:, keep[0]], b[:, keep[0]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["ae_sr4", "ae_sorting", "mae"])
def test_each_pretext_and_baseline_runs_two_steps_and_fine_tunes(task, tmp_path):
  pre = str(tmp_path / "pre")
  train_inprocess(f"tiny:task={task},steps=2", pre, eval_examples=0, image_every=100)
  records = [json.loads(l) for l in open(os.path.join(pre, "metrics.jsonl"))]
  assert np.isfinite([r["loss"] for r in records if "loss" in r]).all()
  # Fine-tuning takes the backbone (cheaper in process than a second CLI run).
  ft = load_config("tiny_finetune", f"init={pre}")
  ft = transfer.resolve_model(ft)
  if task == "ae_sorting":  # trainable position embeddings from zeros, as the paper
    assert ft.model.posemb == "zeros_learn"
  obj = objectives.get(ft)
  images = structured_images(jax.random.key(0), 8)
  params = obj.init_from(jax.jit(obj.init)(jax.random.key(1), images), pre, log=lambda _: None)
  trained = transfer.backbone_of(checkpoints.restore_params(checkpoints.find(pre)))
  np.testing.assert_array_equal(params["backbone"]["embedding"]["kernel"],
                                trained["embedding"]["kernel"])
  if task == "ae_sorting":
    np.testing.assert_array_equal(params["backbone"]["pos_embedding"], 0.0)


def test_contrastive_n0_separates_clean_from_corrupted_energies():
  """objective=contrastive (:task=contrastive_<task>): after training on a fixed
  batch, corrupted images have higher energy than clean ones."""
  c = load_config("tiny", "task=contrastive_denoise")
  assert (c.objective, c.task) == ("contrastive", "denoise")
  obj = objectives.get(c)
  images = structured_images(jax.random.key(0), 16)
  batch = {"image": images, "valid": jnp.ones(16, bool)}
  params = jax.jit(obj.init)(jax.random.key(1), images)
  opt = optax.adam(1e-3)
  rng = jax.random.key(2)

  @jax.jit
  def step(p, s):
    (loss, (m, _)), g = obj.value_and_grad(p, {}, batch, rng)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, m
  state = opt.init(params)
  _, _, m0 = step(params, state)
  for _ in range(40):
    params, state, m = step(params, state)
  gap0 = float(m0["energy_neg"] - m0["energy_pos"])
  gap = float(m["energy_neg"] - m["energy_pos"])
  assert gap > 0.1 and gap > gap0 + 0.1, (gap0, gap)
  assert set(params) == {"model"} and "backbone" in params["model"]  # fine-tunes like energy
