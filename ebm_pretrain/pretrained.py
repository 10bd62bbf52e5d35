"""Use a trained model from Python: ``load(path)`` -> features, energies, restorations.

  from ebm_pretrain import pretrained
  model = pretrained.load("workdirs/demo")          # a workdir, or checkpoints/N, or best/
  feats = model.features(images)                     # [B, D]
  e = model.energy(images)                           # [B]   (energy checkpoints)
  chain = model.restore(corrupted, num_steps=2)      # [N, B, H, W, C] in [0, 1]
  cols = model.restoration_columns(images, task="sr4")  # corrupted, steps, original
  model.logits(images)                               # [B, C]  (classifier checkpoints)
  model.capabilities()                               # what its objective offers, by name
  model.config                                       # the config it was trained with

``images`` are [B, H, W, C] arrays: uint8 in [0, 255], or float in [0, 1]. The
training normalisation (``config.data.mean/std``) is applied here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebm_pretrain import checkpoints, objectives, schema
from ebm_pretrain import workdir as workdir_lib
from ebm_pretrain.corruptions import check_corruption, make_corruption
from ebm_pretrain.data import normalization


class CapabilityError(ValueError):
  """A trained model asked for something its objective does not offer."""


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
    self._offered = self.objective.predict_fns()
    self._compiled = {}  # each compiled once per input shape (and options), not per call

  def capabilities(self) -> list[str]:
    """What this model offers by name (the objective's ``predict_fns``)."""
    return sorted(self._offered)

  def _require(self, name: str, what: str) -> None:
    """A CapabilityError naming the objective and what it offers, unless it offers ``name``."""
    if name not in self._offered:
      raise CapabilityError(
          f"{what} needs a model that offers {name!r}; {self.path} holds a model of the "
          f"{self.config.objective!r} objective, which offers {', '.join(self.capabilities())}")

  def _fn(self, name: str, what: str, **static):
    """The compiled predict function ``name`` (``static``: its options)."""
    self._require(name, what)
    key = (name, tuple(sorted(static.items())))
    if key not in self._compiled:
      fn = functools.partial(self._offered[name], **static)
      self._compiled[key] = jax.jit(lambda p, s, x, *args: fn(p, s, x, *args))
    return self._compiled[key]

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

  def _call(self, name: str, what: str, images, *args, **static):
    return self._fn(name, what, **static)(self.params, self.model_state,
                                          self._normalize(images), *args)

  # -- outputs -----------------------------------------------------------------
  def features(self, images) -> jax.Array:
    """Backbone features [B, D] (the input of the energy or classifier head)."""
    return self._call("features", "features()", images)

  def energy(self, images) -> jax.Array:
    """Scalar energies E(x) [B]."""
    return self._call("energy", "energy()", images)

  def logits(self, images) -> jax.Array:
    """Class logits [B, num_classes] (fine-tuned / linear-probe checkpoints, or
    any objective whose head classifies)."""
    return self._call("logits", "logits()", images)

  def _steps(self, num_steps: int | None) -> int:
    n = int(num_steps or self.config.get("inner_steps", 0))
    if n < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return n

  def restore(self, corrupted_images, num_steps: int | None = None) -> jax.Array:
    """The N-step restoration chain x^1..x^N of corrupted images, [N, B, H, W, C],
    in [0, 1] pixel space. ``num_steps`` defaults to the training N."""
    self._require("restore", "restore()")
    chain = self._call("restore", "restore()", corrupted_images,
                       num_steps=self._steps(num_steps))
    return normalization.to_pixels(chain, self._mean, self._std)

  def restoration_columns(self, images, task: str = "", num_steps: int | None = None,
                          seed: int = 0) -> dict[str, jax.Array]:
    """``images`` corrupted by ``task`` (a corruption spec; default: the training
    one) and restored: {"corrupted", "step_1" .. "step_N", "original"}, each
    [B, H, W, C] in the normalised space (``pictures.grid`` draws them)."""
    what = "restoration_columns()"
    self._require("restore", what)
    restore = self._fn("restore", what, num_steps=self._steps(num_steps))
    x = self._normalize(images)
    rng = jax.random.PRNGKey(seed)
    if task:
      config = self.config.copy_and_resolve_references()
      config.task = task
      if task != self.config.task:  # the training task's options belong to it
        config.task_kwargs = ml_collections.ConfigDict()
      check_corruption(config, field="task")
      corrupted = make_corruption(config)(rng, x)
    else:
      corrupted = self._fn("corrupt", what)(self.params, self.model_state, x, rng)
    chain = restore(self.params, self.model_state, corrupted)
    return {"corrupted": corrupted, **{f"step_{i + 1}": chain[i] for i in range(len(chain))},
            "original": x}


def load(path: str, plugins=()) -> Pretrained:
  """A trained model from a workdir (its newest checkpoint), a ``checkpoints`` or
  ``best`` folder, or one step folder. Raises CheckpointError if there is none.
  ``plugins``: modules to import first, such as the one that registered an
  objective from outside the package (its checkpoint names it; nothing is
  imported because a checkpoint says so)."""
  import importlib
  for module in plugins:
    importlib.import_module(module)
  found = checkpoints.find(path)
  config = checkpoints.read_config(found)
  if config.get("objective", "") not in objectives.names() and found.workdir is not None:
    module = workdir_lib.read_plugin(found.workdir, config.objective)
    if module:
      raise checkpoints.CheckpointError(
          f"{path} holds a {config.objective!r} model, an objective registered by the module "
          f"{module!r}: import it first (or pass plugins=[{module!r}]; --plugin={module} on "
          "the command lines)")
  config = schema.upgrade(config.to_dict())
  step, state = checkpoints.restore_state(found, ("params", "ema", "model_state"))
  return Pretrained(config=config, params=checkpoints.model_params(state), step=step, path=path,
                    model_state=state.get("model_state") or {})
