"""The built-in evaluators that read features (knn, linear_probe) in a training
run, and the linear probe's fit on its own."""
import json
import os

import jax.numpy as jnp
import ml_collections
import jax
import numpy as np

from ebm_pretrain import train
from ebm_pretrain.evaluators.linear_probe import fit_softmax
from helpers import load_config


def test_linear_probe_fit_separates_separable_features():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 8)) * 3
  y = rng.integers(0, 4, 400)
  x = centers[y] + rng.normal(size=(400, 8)) * 0.3
  w, b = fit_softmax(jnp.asarray(x), jnp.asarray(y), num_classes=4, steps=300, lr=0.05, l2=1e-4)
  assert np.mean(np.argmax(x @ np.asarray(w) + np.asarray(b), -1) == y) == 1.0
  # Shuffled labels cannot be fitted as well by a linear model of 8 features.
  w, b = fit_softmax(jnp.asarray(x), jnp.asarray(rng.permutation(y)), num_classes=4, steps=300,
                     lr=0.05, l2=1e-4)
  assert np.mean(np.argmax(x @ np.asarray(w) + np.asarray(b), -1) == y) < 0.6


def test_feature_evaluators_run_during_training(tmp_path):
  c = load_config("tiny", "steps=2")
  c.checkpoint_every = c.image_every = 10
  c.evals = ml_collections.ConfigDict({
      "knn": dict(type="knn", k=5, train_examples=32, examples=16),
      "probe": dict(type="linear_probe", train_examples=32, examples=16, steps=50),
      "psnr": dict(type="psnr")})
  _, last = train.train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:1])
  for key in ("eval/knn_top1", "eval/probe_top1"):
    assert 0.0 <= last[key] <= 1.0 and last[key] * 16 == round(last[key] * 16), key
  assert last["eval/psnr_step_2"] > 0
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert any("eval/knn_top1" in r and r["step"] == 2 for r in rows)
