"""N = 0 (paper appendix B.1, Figure A: "corrupted images as negatives"): the
energy model is trained to rate the clean image low and its corruption
(``config.task``) high, Eq. 3 with the negative given by the corruption instead
of sampled from the model, plus an energy-magnitude regulariser
(``config.energy_reg``, Du & Mordatch 2019). No restoration steps and no alpha:
what N = 1, 2, ... add over this is the paper's point."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from ebm_pretrain import energy, models
from ebm_pretrain.corruptions import check_corruption, make_corruption
from ebm_pretrain.errors import fail
from ebm_pretrain.objectives.base import EnergyModelBase


@dataclasses.dataclass
class ContrastiveObjective(EnergyModelBase):

  def __post_init__(self):
    super().__post_init__()
    self.energy_fn = models.energy_fn_of(self.model)
    self.corrupt = make_corruption(self.config)

  @classmethod
  def defaults(cls, config) -> None:
    config.task = ""              # the corruption that makes the negative
    config.task_kwargs = ml_collections.ConfigDict()
    config.energy_reg = 1.0       # weight of E⁺² + E⁻²

  @classmethod
  def check(cls, config) -> None:
    check_corruption(config)
    if not config.energy_reg >= 0:
      fail("energy_reg", f"must be >= 0, got {config.energy_reg}")

  def loss(self, params, model_state, batch, rng):
    x = batch["image"]
    loss, metrics = energy.contrastive_loss(
        self.energy_fn, params["model"], x, self.corrupt(rng, x), self.config.energy_reg,
        batch["valid"].astype(jnp.float32))
    return loss, (metrics, model_state)

  def console_metrics(self) -> list[str]:
    return ["loss", "energy_pos", "energy_neg"]


