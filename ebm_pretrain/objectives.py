"""Training objectives, picked by name (``config.objective``) as big_vision picks
its loss: the trainer's loop, sharding, checkpointing and metrics are shared.

An objective knows its model, how to initialise its parameters, its loss on a
normalised batch, and what to draw in restoration grids.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_pretrain import config_lib, energy, models

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _model_kwargs(config) -> dict:
  """Everything in ``config.model`` besides name/variant, plus the dtypes."""
  kw = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "variant")}
  return dict(kw, dtype=DTYPES[config.dtype], param_dtype=DTYPES[config.param_dtype])


@dataclasses.dataclass
class EnergyObjective:
  """Paper Eq. 5: restore corrupted images by N energy-descent steps."""
  config: Any

  def __post_init__(self):
    c = self.config
    self.model = models.get_energy_model(c.model.name, c.model.variant, **_model_kwargs(c))
    self.energy_fn = models.energy_fn_of(self.model)
    self.corrupt = config_lib.make_corruption(c)

  def init(self, rng, images):
    return {"model": self.model.init(rng, images)["params"],
            "log_alpha": energy.log_alpha_init(self.config.alpha.init)}

  def frozen(self, path: str) -> bool:
    return path == "log_alpha" and not self.config.alpha.learnable

  def alpha(self, params):
    return energy.alpha_from_log(params["log_alpha"])

  def loss(self, params, batch, rng):
    c = self.config
    x = batch["image"]
    x0 = self.corrupt(rng, x)
    loss, aux = energy.restoration_loss(
        self.energy_fn, params["model"], self.alpha(params), x0, x, c.inner_steps,
        loss=c.loss, unroll=c.unroll, remat=c.get("inner_remat", False),
        weights=batch["valid"].astype(jnp.float32),
        with_aux=True)
    corrupted_error = energy.pixel_error(x0, x, c.loss, batch["valid"])
    metrics = {"alpha": self.alpha(params), "corrupted_error": corrupted_error}
    metrics.update({f"step_error_{n + 1}": e for n, e in enumerate(aux["step_errors"])})
    return loss, metrics

  def visualize(self, params, batch, rng) -> dict[str, jax.Array]:
    """Corrupted input, each restoration step, and the original (normalised)."""
    x = batch["image"]
    x0 = self.corrupt(rng, x)
    chain = energy.restore(self.energy_fn, params["model"], x0, self.alpha(params),
                           self.config.inner_steps, unroll=self.config.unroll)
    out = {"corrupted": x0}
    out.update({f"step_{n + 1}": chain[n] for n in range(chain.shape[0])})
    out["original"] = x
    return out


@dataclasses.dataclass
class SupervisedObjective:
  """Softmax cross-entropy of the backbone plus a linear classifier: the
  plain supervised baseline (and the benchmark's reference step)."""
  config: Any

  def __post_init__(self):
    c = self.config
    self.backbone = models.get_backbone(c.model.name, c.model.variant, **_model_kwargs(c))
    self.head = nn.Dense(c.num_classes, dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype])

  def init(self, rng, images):
    k1, k2 = jax.random.split(rng)
    backbone = self.backbone.init(k1, images)["params"]
    features = self.backbone.apply({"params": backbone}, images)
    return {"backbone": backbone, "head": self.head.init(k2, features)["params"]}

  def frozen(self, path: str) -> bool:
    return False

  def logits(self, params, images, train=False, rng=None):
    rngs = {"dropout": rng} if train and rng is not None else None
    features = self.backbone.apply({"params": params["backbone"]}, images, train=train, rngs=rngs)
    return self.head.apply({"params": params["head"]}, features).astype(jnp.float32)

  def loss(self, params, batch, rng):
    logits = self.logits(params, batch["image"], train=True, rng=rng)
    labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
    smoothing = self.config.get("label_smoothing", 0.0)
    labels = labels * (1 - smoothing) + smoothing / logits.shape[-1]
    w = batch["valid"].astype(jnp.float32)
    ce = -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)
    loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)
    acc = jnp.sum(w * (jnp.argmax(logits, -1) == batch["label"])) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"accuracy": acc}


OBJECTIVES: dict[str, Callable[[Any], Any]] = {"energy": EnergyObjective,
                                               "supervised": SupervisedObjective}


def get_objective(config):
  if config.objective not in OBJECTIVES:
    raise config_lib.ConfigError(f"config.objective: unknown {config.objective!r}; valid: "
                                 f"{', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[config.objective](config)
