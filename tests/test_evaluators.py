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


def test_knn_and_probe_can_read_a_vits_patch_tokens_instead_of_its_pooled_features():
  """``block`` / ``pool``: the features are a block's patch tokens, averaged or
  concatenated in patch order; the evaluators read exactly those; values that
  cannot be read are refused naming the option."""
  import pytest
  from ebm_pretrain import evaluators, objectives, validate
  from ebm_pretrain.errors import ConfigError
  from ebm_pretrain.evaluators.common import Context, features
  from ebm_pretrain.models.vit import Encoder1DBlock
  c = load_config("tiny")  # ViT-mu/4 (2 blocks), 16 px: 16 patch tokens
  obj = objectives.get(c)
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  params = obj.init(jax.random.key(1), images)
  bound = {"params": obj.backbone_params(params)}
  _, inter = obj.backbone.apply(bound, images, mutable=["intermediates"],
                                capture_intermediates=lambda m, _: isinstance(m, Encoder1DBlock))
  blocks = [inter["intermediates"]["Transformer"][f"encoderblock_{i}"]["__call__"][0]
            for i in range(2)]
  first = 1 if c.model.pool == "tok" else 0
  for block in (0, 1, -1):
    tokens = blocks[block][:, first:]
    np.testing.assert_allclose(obj.token_features(params, {}, images, block=block, pool="gap"),
                               tokens.mean(1), rtol=1e-5, atol=1e-6)
    flat = obj.token_features(params, {}, images, block=block, pool="flat")
    assert flat.shape == (3, 16 * tokens.shape[-1])
    np.testing.assert_allclose(flat, tokens.reshape(3, -1), rtol=1e-5, atol=1e-6)
  final = obj.backbone.apply(bound, images, tokens=True)
  np.testing.assert_allclose(obj.token_features(params, {}, images, block=None, pool="flat"),
                             final.reshape(3, -1), rtol=1e-5, atol=1e-6)
  # The evaluator reads them (and by default the model's own pooled features).
  c.eval_examples, c.data.num_workers = 8, 0
  specs = {"own": {}, "mid": dict(block=0), "flat": dict(pool="flat")}
  got = {}
  for name, extra in specs.items():
    c.evals = ml_collections.ConfigDict({name: dict(type="knn", k=3, **extra)})
    validate.validate(c, num_devices=1)
    ev = evaluators.build(c, obj, Context.local())[0]
    got[name] = features(ev, params, {}, c.data.eval_split, 8)[0]
  assert got["own"].shape == (8, obj.backbone.width) and got["mid"].shape == (8, obj.backbone.width)
  assert got["flat"].shape == (8, 16 * obj.backbone.width)
  assert not np.allclose(got["own"], got["mid"])
  for extra, message in ((dict(pool="max"), r"pool='max'; valid: gap, flat"),
                         (dict(block=2), r"block=2: ViT mu/4 has 2 blocks"),
                         (dict(block=-3), r"block=-3")):
    c.evals = ml_collections.ConfigDict({"bad": dict(type="linear_probe", **extra)})
    with pytest.raises(ConfigError, match=r"config.evals.bad: linear_probe " + message):
      validate.validate(c, num_devices=1)
  s = load_config("tiny", "model=swin")
  s.evals = ml_collections.ConfigDict({"bad": dict(type="knn", pool="gap")})
  with pytest.raises(ConfigError, match="read a ViT's patch tokens; model is 'swin'"):
    validate.validate(s, num_devices=1)
