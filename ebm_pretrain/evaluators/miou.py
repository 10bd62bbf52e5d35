"""``miou``: mean intersection-over-union and pixel accuracy of a segmentation
model, from a confusion matrix summed on device over the held-out split.

Inference is whole-image at the training resolution: each validation image is
resized to fit the ``image_size`` square (keeping its aspect ratio) and padded
with unlabeled pixels, and the scores are counted at that resolution. The mean
is over the classes present in the labels or the predictions (a class with an
empty union is left out, as mmsegmentation's ``nanmean``)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ebm_pretrain.evaluators.common import Evaluator
from ebm_pretrain.objectives.segmentation import pixel_weights


def confusion(labels, predictions, weights, num_classes: int):
  """[K, K] float32: weighted counts of (label, prediction) pairs; ``weights`` 0
  drops a pixel (unlabeled, padding)."""
  idx = jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1) * num_classes + predictions
  flat = jnp.zeros((num_classes * num_classes,), jnp.float32)
  return flat.at[idx.reshape(-1)].add(weights.reshape(-1)).reshape(num_classes, num_classes)


def scores(matrix) -> dict[str, float]:
  """mIoU, pixel accuracy and per-class IoU (NaN for an absent class) of a confusion matrix."""
  m = np.asarray(matrix, np.float64)
  inter = np.diag(m)
  union = m.sum(0) + m.sum(1) - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, inter / union, np.nan)
  return {"miou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
          "pixel_accuracy": float(inter.sum() / max(m.sum(), 1.0)), "iou": iou}


class MIoU(Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    return None if config.objective == "segmentation" else "needs objective=segmentation"

  def batch_sums(self, params, model_state, batch, rng):
    logits, _ = self.objective.logits(params, model_state, batch["image"])
    k = logits.shape[-1]
    w = pixel_weights(batch["mask"], batch["valid"])
    return {"confusion": confusion(batch["mask"], jnp.argmax(logits, -1), w, k)}

  def summary(self, totals, count):
    s = scores(totals["confusion"])
    return {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"]}
