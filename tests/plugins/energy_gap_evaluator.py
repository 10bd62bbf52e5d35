"""An evaluator from outside the package, in one file (docs/extending.md): the
mean energy of corrupted held-out images minus that of the clean ones (a trained
energy model should rate its corruptions higher). ``config.evals.gap =
dict(type="energy_gap")``."""
import jax.numpy as jnp

from ebm_pretrain import evaluators


class EnergyGap(evaluators.Evaluator):

  @classmethod
  def check(cls, config, objective_cls, spec):
    return None if config.objective == "energy" else "needs objective=energy"

  def batch_sums(self, params, model_state, batch, rng):
    obj, x = self.objective, batch["image"]
    gap = obj.energy_fn(params["model"], obj.corrupt(rng, x)) - obj.energy_fn(params["model"], x)
    return {"gap": jnp.sum(batch["valid"].astype(jnp.float32) * gap)}

  def summary(self, totals, count):
    return {f"{self.name}": totals["gap"] / count}


evaluators.register("energy_gap", EnergyGap)
