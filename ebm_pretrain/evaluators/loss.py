"""``loss``: the objective's own per-example loss on held-out images (eval mode),
for objectives that define ``per_example_loss`` (the autoencoder baselines)."""
from __future__ import annotations

import jax.numpy as jnp

from ebm_pretrain.evaluators.common import Evaluator


class Loss(Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    if not callable(getattr(objective_cls, "per_example_loss", None)):
      return f"needs an objective with per_example_loss; {config.objective} has none"
    return None

  def batch_sums(self, params, model_state, batch, rng):
    per_example = self.objective.per_example_loss(params, model_state, batch, rng)
    return {"loss": jnp.sum(batch["valid"].astype(jnp.float32) * per_example)}

  def summary(self, totals, count):
    return {"loss": totals["loss"] / count}
