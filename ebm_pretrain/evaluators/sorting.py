"""``sorting``: how well N energy steps sort shuffled position embeddings back.
Per stage (shuffled, each step): the embedding MSE and the fraction of tokens
whose embedding is nearest to their own position's."""
from __future__ import annotations

import jax.numpy as jnp

from ebm_pretrain import sorting
from ebm_pretrain.evaluators.common import Evaluator


class Sorting(Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    return None if config.objective == "sorting" else "needs objective=sorting"

  def batch_sums(self, params, model_state, batch, rng):
    problem, keep, posemb, _ = self.objective.sorting_problem(batch["image"], rng)
    chain = self.objective.chain(params, problem)
    w = batch["valid"].astype(jnp.float32)
    out = {}
    stages = [("shuffled", problem.start)] + [(f"step_{n + 1}", chain[n])
                                              for n in range(chain.shape[0])]
    for name, pe in stages:
      out[f"mse_{name}"] = jnp.sum(w * jnp.mean((pe - problem.target) ** 2, axis=(1, 2)))
      out[f"sorted_{name}"] = jnp.sum(w * sorting.sorted_fraction(pe, posemb, keep))
    return out

  def summary(self, totals, count):
    return {f"pe_{k}": v / count for k, v in totals.items()}
