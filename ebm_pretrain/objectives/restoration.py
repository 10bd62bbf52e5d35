"""The energy objective on pixels (paper Eq. 5): corrupt, restore by N energy
descent steps, mean restoration error of every step. ``EnergyModelObjective``
holds what it shares with patch sorting: the energy model (backbone + bias-free
Dense(1)) and the learnable step size alpha."""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ebm_pretrain import energy, losses, models
from ebm_pretrain.corruptions import check_corruption, make_corruption
from ebm_pretrain.errors import fail
from ebm_pretrain.objectives.base import EnergyModelBase


class Problem(NamedTuple):
  """One restoration problem: descend ``energy_fn(model_params, x)`` from ``start``
  towards ``target``, scored with ``loss`` (a name in ``losses.LOSSES``)."""
  energy_fn: Callable
  start: jax.Array
  target: jax.Array
  loss: str


@dataclasses.dataclass
class EnergyModelObjective(EnergyModelBase):
  """An energy model (backbone + bias-free Dense(1)) and a learnable step size
  alpha; a subclass says what is restored (``problem``)."""

  @classmethod
  def defaults(cls, config) -> None:
    """The energy block: N, how the chain compiles, the loss, α."""
    config.task_kwargs = ml_collections.ConfigDict()  # the corruption's (or sorting's) options
    config.inner_steps = 2        # N
    config.unroll = True          # unroll the inner fori_loop (faster at N=2)
    config.inner_remat = False    # jax.checkpoint each inner step's input gradient
    config.stepwise_grads = True  # each step's outer gradient before the next step (less memory)
    config.loss = "smooth_l1"     # Listing 1; "mse" is Eq. 5
    config.alpha = ml_collections.ConfigDict(dict(init=0.1, learnable=True))

  @classmethod
  def check(cls, config) -> None:
    if not isinstance(config.inner_steps, int) or config.inner_steps < 1:
      fail("inner_steps", f"must be an int >= 1, got {config.inner_steps!r}")
    if config.loss not in losses.LOSSES:
      fail("loss", f"{config.loss!r}; valid: {', '.join(losses.LOSSES)}")
    if not config.alpha.init > 0:
      fail("alpha.init", f"must be positive, got {config.alpha.init}")

  def init(self, rng, images):
    return dict(super().init(rng, images),
                log_alpha=energy.log_alpha_init(self.config.alpha.init))

  def frozen(self, path: str) -> bool:
    return path == "log_alpha" and not self.config.alpha.learnable

  def alpha(self, params):
    return energy.alpha_from_log(params["log_alpha"])

  def _split(self, params):
    return params["model"], self.alpha(params)

  def problem(self, batch, rng) -> Problem:
    raise NotImplementedError

  def chain(self, params, problem: Problem) -> jax.Array:
    """[N, ...]: the restoration steps x^1..x^N of ``problem.start``."""
    return energy.restore(problem.energy_fn, params["model"], problem.start,
                          self.alpha(params), self.config.inner_steps, unroll=self.config.unroll)

  def _metrics(self, params, p: Problem, aux, batch, model_state):
    metrics = {"alpha": self.alpha(params),
               "corrupted_error": losses.pixel_error(p.start, p.target, p.loss, batch["valid"])}
    metrics.update({f"step_error_{n + 1}": e for n, e in enumerate(aux["step_errors"])})
    return metrics, model_state

  def _kwargs(self, p: Problem, batch):
    c = self.config
    return dict(loss=p.loss, unroll=c.unroll, remat=c.inner_remat,
                weights=batch["valid"].astype(jnp.float32))

  def loss(self, params, model_state, batch, rng):
    """The mean restoration error over the N steps (one jax.value_and_grad over all)."""
    p = self.problem(batch, rng)
    total, aux = energy.restoration_loss(p.energy_fn, *self._split(params), p.start, p.target,
                                         self.config.inner_steps, with_aux=True,
                                         **self._kwargs(p, batch))
    return total, self._metrics(params, p, aux, batch, model_state)

  def value_and_grad(self, params, model_state, batch, rng):
    """``jax.value_and_grad(self.loss, has_aux=True)``; with ``config.stepwise_grads``
    each step's gradient is taken before the next step runs (same value and
    gradient, less memory: ``energy.restoration_value_and_grad``)."""
    if not self.config.stepwise_grads:
      return super().value_and_grad(params, model_state, batch, rng)
    p = self.problem(batch, rng)
    (total, aux), grads = energy.restoration_value_and_grad(
        p.energy_fn, self._split, params, p.start, p.target, self.config.inner_steps,
        **self._kwargs(p, batch))
    return (total, self._metrics(params, p, aux, batch, model_state)), grads

  def console_metrics(self) -> list[str]:
    steps = [f"step_error_{n + 1}" for n in range(self.config.inner_steps)]
    return ["loss", *steps, "corrupted_error", "alpha"]


@dataclasses.dataclass
class EnergyObjective(EnergyModelObjective):
  """Paper Eq. 5: restore corrupted images (``config.task``) by N energy-descent steps."""

  def __post_init__(self):
    super().__post_init__()
    self.energy_fn = models.energy_fn_of(self.model)
    self.corrupt = make_corruption(self.config)

  @classmethod
  def defaults(cls, config) -> None:
    super().defaults(config)
    config.task = ""              # a corruption spec (ebm_pretrain/corruptions.py)

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    check_corruption(config)

  def problem(self, batch, rng) -> Problem:
    x = batch["image"]
    return Problem(self.energy_fn, self.corrupt(rng, x), x, self.config.loss)

  def predict_fns(self) -> dict:
    def restore(params, model_state, images, num_steps: int):
      return energy.restore(self.energy_fn, params["model"], images, self.alpha(params),
                            num_steps, unroll=self.config.unroll)
    return dict(super().predict_fns(), restore=restore,
                energy=lambda params, model_state, images: self.energy_fn(params["model"], images),
                corrupt=lambda params, model_state, images, rng: self.corrupt(rng, images))

  def visualize(self, params, batch, rng, model_state=None) -> dict[str, jax.Array]:
    """Corrupted input, each restoration step, and the original (normalised)."""
    p = self.problem(batch, rng)
    chain = self.chain(params, p)
    out = {"corrupted": p.start}
    out.update({f"step_{n + 1}": chain[n] for n in range(chain.shape[0])})
    out["original"] = p.target
    return out

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"psnr": dict(type="psnr")}
