"""Patch sorting (paper Eq. 7): N energy-descent steps on shuffled sin-cos position
embeddings, E(params, x, PE), sort them back; MSE against the true embeddings,
averaged over the steps. Edge masking and 50% patch dropout as appendix A.2
(the ops: ``ebm_pretrain/sorting.py``); the loss covers the kept tokens, the
only ones whose embeddings enter the network."""
from __future__ import annotations

import dataclasses

import jax
import ml_collections

from ebm_pretrain import models, sorting
from ebm_pretrain.errors import fail
from ebm_pretrain.objectives.restoration import EnergyModelObjective, Problem


def set_defaults(config, posemb: str) -> None:
  """The fields sorting and its autoencoder baseline set: the encoder's position
  embeddings (``posemb``), the MSE of Eq. 7, appendix A.2's regularisers."""
  config.model.posemb = posemb
  config.loss = "mse"
  config.task_kwargs = ml_collections.ConfigDict(sorting.DEFAULTS)


def check_settings(config) -> None:
  """The sorting regularisers' ``task_kwargs`` (shared with ``ae_sorting``)."""
  unknown = set(config.task_kwargs) - set(sorting.DEFAULTS)
  if unknown:
    fail("task_kwargs", f"{sorted(unknown)}: sorting takes {', '.join(sorting.DEFAULTS)}")
  if not 0 < config.task_kwargs.get("keep_ratio", 0.5) <= 1:
    fail("task_kwargs.keep_ratio", f"must be in (0, 1], got {config.task_kwargs.keep_ratio}")


@dataclasses.dataclass
class SortingObjective(EnergyModelObjective):

  def __post_init__(self):
    super().__post_init__()
    self.kwargs = sorting.settings(self.config.task_kwargs)

  @classmethod
  def defaults(cls, config) -> None:
    set_defaults(config, posemb="sincos2d")

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    m = config.model
    if m.name != "vit" or m.posemb != "sincos2d":
      fail("objective", f"sorting shuffles fixed sin-cos position embeddings: it needs "
           f"model.name=vit with model.posemb=sincos2d, got {m.name} posemb={m.get('posemb')!r}")
    check_settings(config)
    if config.loss != "mse":
      fail("loss", f"sorting's loss is the MSE of Eq. 7, got {config.loss!r}")

  def sorting_problem(self, images, rng):
    """(the restoration problem over the kept tokens' embeddings, kept indices
    [B, K], the table of all N true embeddings [N, D])."""
    k_reg, k_perm = jax.random.split(rng)
    gh, gw = self.backbone.patch_grid(images.shape[1:3])
    posemb = models.posemb_sincos_2d(gh, gw, self.backbone.width)[0]  # [N, D]
    patch = models.decode_variant(self.config.model.variant)["patch_size"]
    images, keep = sorting.regularise(k_reg, images, patch, self.kwargs["keep_ratio"],
                                      self.kwargs["edge_mask"])
    start, true = sorting.shuffled_posemb(k_perm, posemb, keep)

    def energy_fn(model_params, pe):
      return self.model.apply({"params": model_params}, images, posemb=pe, keep=keep)
    return Problem(energy_fn, start, true, "mse"), keep, posemb

  def problem(self, batch, rng) -> Problem:
    return self.sorting_problem(batch["image"], rng)[0]

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"sorting": dict(type="sorting")}
