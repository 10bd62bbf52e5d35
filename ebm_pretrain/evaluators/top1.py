"""``top1``: a classifier's top-1 accuracy and cross-entropy on held-out labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ebm_pretrain.evaluators.common import Evaluator


class Top1(Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    return None if config.objective == "supervised" else "needs objective=supervised"

  def batch_sums(self, params, model_state, batch, rng):
    logits, _ = self.objective.logits(params, model_state, batch["image"])
    w = batch["valid"].astype(jnp.float32)
    labels = jnp.maximum(batch["label"], 0)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return {"correct": jnp.sum(w * (jnp.argmax(logits, -1) == labels)), "loss": jnp.sum(w * ce)}

  def summary(self, totals, count):
    return {"top1": totals["correct"] / count, "loss": totals["loss"] / count}
