"""k-nearest-neighbour evaluation of frozen features (DINO's weighted kNN):
cosine similarity, the k = 20 nearest training features vote for their class
with weight exp(similarity / T), T = 0.07.

  python -m ebm_pretrain.knn --init=workdirs/demo [--train_examples=N] [--eval_examples=N]

reads the data named in the checkpoint's config (train split and eval split),
extracts features with ``pretrained.load(init).features`` and prints top-1.
"""
from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np


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


def extract(model, source, *, num_examples: int | None = None, batch_size: int = 256):
  """(features [N, D], labels [N]) of the first ``num_examples`` of ``source``,
  center-cropped at the model's image size."""
  from ebm_pretrain.data import pipeline
  d = model.config.data
  ds = pipeline.make_eval_dataset(source, batch_size=batch_size, image_size=d.image_size,
                                  channels=d.channels, resize_to=d.get("eval_resize") or
                                  d.image_size, num_examples=num_examples)
  feats, labels = [], []
  for batch in ds:
    keep = batch["valid"]
    feats.append(np.asarray(model.features(batch["image"]))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(feats), np.concatenate(labels)


def evaluate(model, *, train_examples: int | None = None, eval_examples: int | None = None,
             k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
  """kNN top-1 of ``model``'s features on the eval split of its training data."""
  from ebm_pretrain.data import sources
  d = model.config.data
  train_x, train_y = extract(model, sources.get_source(d, d.split), num_examples=train_examples)
  test_x, test_y = extract(model, sources.get_source(d, d.eval_split), num_examples=eval_examples)
  num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
  pred = knn_predict(train_x, train_y, test_x, num_classes=num_classes, k=k,
                     temperature=temperature)
  return float(np.mean(pred == test_y))


def main(argv):
  from absl import flags
  from ebm_pretrain import checkpoints, pretrained
  from ebm_pretrain.data.sources import DataSourceError
  f = flags.FLAGS
  try:
    model = pretrained.load(f.init)
    top1 = evaluate(model, train_examples=f.train_examples or None,
                    eval_examples=f.eval_examples or None, k=f.k, temperature=f.temperature)
  except (checkpoints.CheckpointError, DataSourceError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"kNN (k={f.k}, T={f.temperature}) top-1 of {f.init} step {model.step}: {top1:.4f}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("init", None, "A workdir, checkpoints folder or step folder.")
  flags.DEFINE_integer("train_examples", 0, "Use the first N training images (0: all).")
  flags.DEFINE_integer("eval_examples", 0, "Use the first N eval images (0: all).")
  flags.DEFINE_integer("k", 20, "Neighbours.")
  flags.DEFINE_float("temperature", 0.07, "Vote weight temperature.")
  flags.mark_flag_as_required("init")
  app.run(main)
