"""Patch sorting (paper Eq. 7): N energy-descent steps on shuffled sin-cos position
embeddings, E(params, x, PE), sort them back; MSE against the true embeddings,
averaged over the steps. Edge masking and 50% patch dropout as appendix A.2
(the ops: ``ebm_pretrain/sorting.py``); the loss covers the kept tokens, the
only ones whose embeddings enter the network."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ebm_pretrain import models, sorting
from ebm_pretrain.errors import fail
from ebm_pretrain.objectives.restoration import EnergyModelObjective, Problem


def set_defaults(config, posemb: str) -> None:
  """The fields sorting and its autoencoder baseline set: the encoder's position
  embeddings (``posemb``), appendix A.2's regularisers."""
  config.model.posemb = posemb
  config.task_kwargs = ml_collections.ConfigDict(sorting.DEFAULTS)


def check_settings(config) -> None:
  """The sorting regularisers' ``task_kwargs`` (shared with ``ae_sorting``)."""
  unknown = set(config.task_kwargs) - set(sorting.DEFAULTS)
  if unknown:
    fail("task_kwargs", f"{sorted(unknown)}: sorting takes {', '.join(sorting.DEFAULTS)}")
  if not 0 < config.task_kwargs.get("keep_ratio", 0.5) <= 1:
    fail("task_kwargs.keep_ratio", f"must be in (0, 1], got {config.task_kwargs.keep_ratio}")


class SortingProblem(NamedTuple):
  problem: Problem    # over the kept tokens' embeddings [B, K, D]
  keep: jax.Array     # [B, K] the kept tokens' true positions
  posemb: jax.Array   # [N, D] every position's true embedding
  images: jax.Array   # the regularised (edge-masked) images the energy sees


@dataclasses.dataclass
class SortingObjective(EnergyModelObjective):

  def __post_init__(self):
    super().__post_init__()
    self.kwargs = sorting.settings(self.config.task_kwargs)

  @classmethod
  def defaults(cls, config) -> None:
    super().defaults(config)  # the energy block, then sorting's: Eq. 7's MSE
    set_defaults(config, posemb="sincos2d")
    config.loss = "mse"

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

  def sorting_problem(self, images, rng) -> SortingProblem:
    k_reg, k_perm = jax.random.split(rng)
    gh, gw = self.backbone.patch_grid(images.shape[1:3])
    posemb = models.posemb_sincos_2d(gh, gw, self.backbone.width)[0]  # [N, D]
    patch = models.decode_variant(self.config.model.variant)["patch_size"]
    images, keep = sorting.regularise(k_reg, images, patch, self.kwargs["keep_ratio"],
                                      self.kwargs["edge_mask"])
    start, true = sorting.shuffled_posemb(k_perm, posemb, keep)

    def energy_fn(model_params, pe):
      return self.model.apply({"params": model_params}, images, posemb=pe, keep=keep)
    return SortingProblem(Problem(energy_fn, start, true, "mse"), keep, posemb, images)

  def problem(self, batch, rng) -> Problem:
    return self.sorting_problem(batch["image"], rng).problem

  def visualize(self, params, batch, rng, model_state=None) -> dict[str, jax.Array]:
    """The kept patches drawn where their embeddings point: shuffled, after each
    step, and in place (dropped positions hold the data mean)."""
    s = self.sorting_problem(batch["image"], rng)
    chain = self.chain(params, s.problem)
    patch = models.decode_variant(self.config.model.variant)["patch_size"]

    def drawn(pe):
      nearest = jnp.argmin(jnp.sum((pe[:, :, None] - s.posemb[None, None]) ** 2, -1), -1)
      return sorting.place_patches(s.images, patch, s.keep, nearest)
    out = {"shuffled": drawn(s.problem.start)}
    out.update({f"step_{n + 1}": drawn(chain[n]) for n in range(chain.shape[0])})
    out["in_place"] = sorting.place_patches(s.images, patch, s.keep, s.keep)
    return out

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"sorting": dict(type="sorting")}
