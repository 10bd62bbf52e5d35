"""``psnr``: pixel restoration quality. PSNR ([0, 1] pixels) against the clean
image of every stage the objective draws (``Objective.visualize``: the corrupted
input and each restoration step)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ebm_pretrain.data import normalization
from ebm_pretrain.evaluators.common import Evaluator
from ebm_pretrain.objectives.base import Base


class PSNR(Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    if objective_cls.visualize is Base.visualize:
      return "needs an objective that draws its restorations (visualize), e.g. energy"
    return None

  def batch_sums(self, params, model_state, batch, rng):
    d = self.config.data
    stages = self.objective.visualize(params, batch, rng)
    clean = normalization.to_pixels(stages.pop("original"), d.mean, d.std)
    w = batch["valid"].astype(jnp.float32)
    return {name: jnp.sum(w * jnp.mean((normalization.to_pixels(x, d.mean, d.std) - clean) ** 2,
                                       axis=(1, 2, 3)))
            for name, x in stages.items()}

  def summary(self, totals, count):
    return {f"psnr_{k}": float(10 * np.log10(1.0 / max(v / count, 1e-12)))
            for k, v in totals.items()}
