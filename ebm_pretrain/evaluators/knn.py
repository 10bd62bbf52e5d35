"""``knn``: k-nearest-neighbour top-1 of frozen backbone features (DINO's weighted
kNN): cosine similarity, the k nearest training features vote for their class
with weight exp(similarity / T). Options: ``k`` (20), ``temperature`` (0.07),
``train_examples`` (the first N of the training split without the holdout,
``data.holdout``, whatever split is evaluated; <= 0: all), ``block`` and
``pool`` (a ViT's patch tokens instead of its pooled features: common.py)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ebm_pretrain.data import sources
from ebm_pretrain.evaluators.common import (FEATURE_OPTIONS, Evaluator,
                                            feature_options_problem, features)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _vote(test, train, train_labels, *, num_classes: int, k: int, temperature: float):
  sim = test @ train.T                                     # [b, n] cosine similarities
  top_sim, top_idx = jax.lax.top_k(sim, k)
  weights = jnp.exp(top_sim / temperature)
  onehot = jax.nn.one_hot(train_labels[top_idx], num_classes)  # [b, k, C]
  return jnp.argmax(jnp.einsum("bk,bkc->bc", weights, onehot), axis=-1)


def knn_predict(train_features, train_labels, test_features, *, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
  """Predicted labels [M] for test features [M, D] from train features [N, D]."""
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  if train_features.ndim != 2 or test_features.ndim != 2 or \
      train_features.shape[1] != test_features.shape[1]:
    raise ValueError(f"features must be [N, D] and [M, D]; got {train_features.shape} and "
                     f"{test_features.shape}")
  if len(train_labels) != len(train_features):
    raise ValueError(f"{len(train_labels)} labels for {len(train_features)} train features")
  k = min(k, len(train_features))

  def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  train = jnp.asarray(unit(train_features))
  labels = jnp.asarray(np.asarray(train_labels, np.int32))
  test = unit(test_features)
  out = [_vote(jnp.asarray(test[i:i + chunk]), train, labels, num_classes=num_classes, k=k,
               temperature=temperature) for i in range(0, len(test), chunk)]
  return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0,), np.int32)


class KNN(Evaluator):
  options = dict(k=20, temperature=0.07, train_examples=0, **FEATURE_OPTIONS)

  @classmethod
  def check(cls, config, objective_cls, spec):
    return feature_options_problem(config, spec)

  def run(self, params, model_state):
    s = self.spec
    train_x, train_y = features(self, params, model_state, sources.BANK, s["train_examples"])
    test_x, test_y = features(self, params, model_state, s["split"], s["examples"])
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_x, train_y, test_x, num_classes=num_classes, k=s["k"],
                       temperature=s["temperature"])
    return {f"{self.name}_top1": float(np.mean(pred == test_y))}
