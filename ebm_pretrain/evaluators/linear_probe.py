"""``linear_probe``: top-1 of a linear classifier on frozen backbone features.

The features of the first ``train_examples`` images of the training split
without the holdout (``data.holdout``; whatever split is evaluated) are
standardised (train statistics) and a softmax regression with L2 penalty ``l2``
is fitted full-batch by ``steps`` of Adam (lr ``lr``) in one compiled loop;
seconds for tens of thousands of examples. It measures linear separability
cheaply during training; the paper's protocol (MAE's BatchNorm + LARS probe
with augmentation) is ``configs/linprobe_vit_*.py``. ``block`` and ``pool``: a
ViT's patch tokens instead of its pooled features (common.py)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_pretrain.data import sources
from ebm_pretrain.evaluators.common import (FEATURE_OPTIONS, Evaluator,
                                            feature_options_problem, features)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_softmax(x, y, *, num_classes: int, steps: int, lr: float, l2: float):
  """(W [D, C], b [C]) minimising mean cross-entropy + l2 * |W|^2 on (x [N, D], y [N])."""
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  tx = optax.adam(lr)

  def loss(p):
    logits = x @ p[0] + p[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.mean(ce) + l2 * jnp.sum(p[0] ** 2)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


class LinearProbe(Evaluator):
  options = dict(train_examples=0, steps=500, lr=0.01, l2=1e-4, **FEATURE_OPTIONS)

  @classmethod
  def check(cls, config, objective_cls, spec):
    return feature_options_problem(config, spec)

  def run(self, params, model_state):
    s = self.spec
    train_x, train_y = features(self, params, model_state, sources.BANK, s["train_examples"])
    test_x, test_y = features(self, params, model_state, s["split"], s["examples"])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    w, b = fit_softmax(jnp.asarray((train_x - mean) / std), jnp.asarray(train_y),
                       num_classes=num_classes, steps=int(s["steps"]), lr=float(s["lr"]),
                       l2=float(s["l2"]))
    pred = np.argmax(np.asarray(((test_x - mean) / std) @ np.asarray(w) + np.asarray(b)), -1)
    return {f"{self.name}_top1": float(np.mean(pred == test_y))}
