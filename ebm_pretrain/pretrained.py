"""Use a trained model from Python: ``load(path)`` -> features, energies, restorations.

  from ebm_pretrain import pretrained
  model = pretrained.load("workdirs/demo")          # a workdir, or checkpoints/N, or best/
  feats = model.features(images)                     # [B, D]
  e = model.energy(images)                           # [B]   (energy checkpoints)
  chain = model.restore(corrupted, num_steps=2)      # [N, B, H, W, C] in [0, 1]
  cols = model.restoration_columns(images, task="sr4")  # corrupted, steps, original
  model.config                                       # the config it was trained with

``images`` are [B, H, W, C] arrays: uint8 in [0, 255], or float in [0, 1]. The
training normalisation (``config.data.mean/std``) is applied here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebm_pretrain import checkpoints, energy, objectives, recipes
from ebm_pretrain.data import normalization
from ebm_pretrain.objectives.restoration import EnergyObjective, check_corruption, make_corruption
from ebm_pretrain.objectives.supervised import SupervisedObjective


@dataclasses.dataclass
class Pretrained:
  config: ml_collections.ConfigDict
  params: dict
  step: int
  path: str
  model_state: Any = dataclasses.field(default_factory=dict)  # BatchNorm statistics

  def __post_init__(self):
    self.objective = objectives.get(self.config)
    d = self.config.data
    self._mean, self._std = tuple(d.mean), tuple(d.std)
    # Compiled once per input shape (and per num_steps), not per call.
    self._features = jax.jit(self.objective.features)
    if isinstance(self.objective, EnergyObjective):  # pixel restoration
      obj = self.objective
      self._energy = jax.jit(obj.energy_fn)
      self._restore = jax.jit(
          lambda p, x, n: energy.restore(obj.energy_fn, p["model"], x, obj.alpha(p), n,
                                         unroll=obj.config.unroll), static_argnums=2)

  # -- inputs ------------------------------------------------------------------
  def _normalize(self, images) -> jax.Array:
    x = np.asarray(images) if not isinstance(images, jax.Array) else images
    c = self.config.data.channels
    if x.ndim != 4 or x.shape[-1] != c:
      raise ValueError(f"images must be [B, H, W, {c}] (the model was trained on {c}-channel "
                       f"data), got shape {tuple(x.shape)}")
    if x.dtype != np.uint8 and not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got {x.dtype}")
    return normalization.normalize(x, self._mean, self._std)

  # -- outputs -----------------------------------------------------------------
  def features(self, images) -> jax.Array:
    """Backbone features [B, D] (the input of the energy or classifier head)."""
    return self._features(self.params, self.model_state, self._normalize(images))

  def _energy_objective(self, what: str):
    if not isinstance(self.objective, EnergyObjective):
      raise ValueError(f"{what} needs a pixel-restoration energy checkpoint; {self.path} holds "
                       f"a {self.config.objective!r} model")
    return self.objective

  def energy(self, images) -> jax.Array:
    """Scalar energies E(x) [B]."""
    self._energy_objective("energy()")
    return self._energy(self.params["model"], self._normalize(images))

  def restore(self, corrupted_images, num_steps: int | None = None) -> jax.Array:
    """The N-step restoration chain x^1..x^N of corrupted images, [N, B, H, W, C],
    in [0, 1] pixel space. ``num_steps`` defaults to the training N."""
    self._energy_objective("restore()")
    n = int(num_steps or self.config.inner_steps)
    if n < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    chain = self._restore(self.params, self._normalize(corrupted_images), n)
    return normalization.to_pixels(chain, self._mean, self._std)

  def restoration_columns(self, images, task: str = "", num_steps: int | None = None,
                          seed: int = 0) -> dict[str, jax.Array]:
    """``images`` corrupted by ``task`` (a corruption spec; default: the training
    one) and restored: {"corrupted", "step_1" .. "step_N", "original"}, each
    [B, H, W, C] in the normalised space (``pictures.grid`` draws them)."""
    obj = self._energy_objective("restoration_columns()")
    n = int(num_steps or self.config.inner_steps)
    if n < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    corrupt = obj.corrupt
    if task:
      config = self.config.copy_and_resolve_references()
      config.task = task
      if task != self.config.task:  # the training task's options belong to it
        config.task_kwargs = ml_collections.ConfigDict()
      check_corruption(config, field="task")
      corrupt = make_corruption(config)
    x = self._normalize(images)
    corrupted = corrupt(jax.random.PRNGKey(seed), x)
    chain = self._restore(self.params, corrupted, n)
    return {"corrupted": corrupted, **{f"step_{i + 1}": chain[i] for i in range(n)},
            "original": x}

  def logits(self, images) -> jax.Array:
    """Class logits [B, num_classes] (fine-tuned / linear-probe checkpoints)."""
    if not isinstance(self.objective, SupervisedObjective):
      raise ValueError(f"logits() needs a classifier checkpoint; {self.path} holds an "
                       f"{self.config.objective!r} model")
    logits, _ = self.objective.logits(self.params, self.model_state, self._normalize(images))
    return logits


def load(path: str) -> Pretrained:
  """A trained model from a workdir (its newest checkpoint), a ``checkpoints`` or
  ``best`` folder, or one step folder. Raises CheckpointError if there is none."""
  found = checkpoints.find(path)
  config = recipes.complete(checkpoints.read_config(found).to_dict())
  step, state = checkpoints.restore_state(found, ("params", "ema", "model_state"))
  return Pretrained(config=config, params=checkpoints.model_params(state), step=step, path=path,
                    model_state=state.get("model_state") or {})
