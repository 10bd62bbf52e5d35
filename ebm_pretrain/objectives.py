"""Training objectives, picked by name (``config.objective``) as big_vision picks
its loss: the trainer's loop, sharding, checkpointing and metrics are shared.

An objective knows its model and how to initialise it, its loss on a normalised
batch, and its held-out evaluation:

  init(rng, images) -> params
  init_model_state(rng, images) -> non-trained variables (BatchNorm statistics), or {}
  loss(params, model_state, batch, rng) -> (loss, (metrics, new model_state))
  value_and_grad(params, model_state, batch, rng) -> ((loss, (metrics, state)), grads)
      (optional; default jax.value_and_grad(loss, has_aux=True))
  eval_sums(params, model_state, batch, rng) -> per-batch sums, with "count"
  eval_summary(totals) -> {"eval/...": value}
  frozen(path) -> whether the optimizer leaves a parameter alone
  lr_multipliers(params) -> per-parameter learning-rate factors (or None)
  init_from(params, path) -> params with the pretrained backbone of a checkpoint
  visualize(params, batch, rng) -> images to draw (optional)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ebm_pretrain import autoencoders, checkpoints, config_lib, energy, mixing, models, sorting

def path_str(path) -> str:
  """A pytree key path as 'a/b/c'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _weighted_mean(x, w):
  return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1.0)


@dataclasses.dataclass
class _EnergyModelObjective:
  """What the energy objectives share: an energy model (backbone + bias-free
  Dense(1)) and a learnable step size alpha."""
  config: Any

  def __post_init__(self):
    c = self.config
    self.model = models.get_energy_model(c.model.name, c.model.variant, **config_lib.model_kwargs(c))
    self.backbone = self.model.backbone

  def init(self, rng, images):
    return {"model": self.model.init(rng, images)["params"],
            "log_alpha": energy.log_alpha_init(self.config.alpha.init)}

  def init_model_state(self, rng, images):
    return {}

  def frozen(self, path: str) -> bool:
    return path == "log_alpha" and not self.config.alpha.learnable

  def lr_multipliers(self, params):
    return None

  def init_from(self, params, path: str, log=print):
    """``params`` with the backbone of the checkpoint at ``path``; the energy head
    and alpha stay fresh."""
    model = dict(params["model"], backbone=checkpoints.pretrained_backbone(
        self.config, params["model"]["backbone"], path, log))
    return dict(params, model=model)

  def alpha(self, params):
    return energy.alpha_from_log(params["log_alpha"])

  def _split(self, params):
    return params["model"], self.alpha(params)

  # A subclass defines its restoration problem: (energy_fn, start, target, loss name).
  def _restoration(self, batch, rng):
    raise NotImplementedError

  def _with_metrics(self, params, start, target, loss, aux, batch, model_state):
    metrics = {"alpha": self.alpha(params),
               "corrupted_error": energy.pixel_error(start, target, loss, batch["valid"])}
    metrics.update({f"step_error_{n + 1}": e for n, e in enumerate(aux["step_errors"])})
    return metrics, model_state

  def _kwargs(self, loss, batch):
    c = self.config
    return dict(loss=loss, unroll=c.unroll, remat=c.get("inner_remat", False),
                weights=batch["valid"].astype(jnp.float32))

  def loss(self, params, model_state, batch, rng):
    """The mean restoration error over the N steps (one jax.value_and_grad over all)."""
    energy_fn, start, target, loss = self._restoration(batch, rng)
    total, aux = energy.restoration_loss(energy_fn, *self._split(params), start, target,
                                         self.config.inner_steps, with_aux=True,
                                         **self._kwargs(loss, batch))
    return total, self._with_metrics(params, start, target, loss, aux, batch, model_state)

  def value_and_grad(self, params, model_state, batch, rng):
    """``jax.value_and_grad(self.loss, has_aux=True)``; with ``config.stepwise_grads``
    each step's gradient is taken before the next step runs (same value and
    gradient, less memory: ``energy.restoration_value_and_grad``)."""
    if not self.config.get("stepwise_grads", True):
      return jax.value_and_grad(self.loss, has_aux=True)(params, model_state, batch, rng)
    energy_fn, start, target, loss = self._restoration(batch, rng)
    (total, aux), grads = energy.restoration_value_and_grad(
        energy_fn, self._split, params, start, target, self.config.inner_steps,
        **self._kwargs(loss, batch))
    return (total, self._with_metrics(params, start, target, loss, aux, batch,
                                      model_state)), grads


@dataclasses.dataclass
class EnergyObjective(_EnergyModelObjective):
  """Paper Eq. 5: restore corrupted images by N energy-descent steps."""

  def __post_init__(self):
    super().__post_init__()
    self.energy_fn = models.energy_fn_of(self.model)
    self.corrupt = config_lib.make_corruption(self.config)

  def _restoration(self, batch, rng):
    x = batch["image"]
    return self.energy_fn, self.corrupt(rng, x), x, self.config.loss

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

  def eval_sums(self, params, model_state, batch, rng):
    """Squared pixel error ([0, 1] space) of the corrupted and of each restored
    image against the clean one, summed over the valid examples."""
    d = self.config.data
    mean, std = jnp.asarray(d.mean), jnp.asarray(d.std)
    stages = self.visualize(params, batch, rng)
    clean = jnp.clip(stages.pop("original") * std + mean, 0.0, 1.0)
    w = batch["valid"].astype(jnp.float32)
    out = {name: jnp.sum(w * jnp.mean((jnp.clip(x * std + mean, 0.0, 1.0) - clean) ** 2,
                                      axis=(1, 2, 3)))
           for name, x in stages.items()}
    out["count"] = jnp.sum(w)
    return out

  def eval_summary(self, totals: dict[str, float]) -> dict[str, float]:
    """PSNR of the corrupted input and of each restoration step."""
    n = max(totals.get("count", 0.0), 1.0)
    return {f"eval/psnr_{k}": float(10 * np.log10(1.0 / max(v / n, 1e-12)))
            for k, v in totals.items() if k != "count"}


@dataclasses.dataclass
class SortingObjective(_EnergyModelObjective):
  """Paper Eq. 7: N energy-descent steps on shuffled sin-cos position embeddings,
  E(params, x, PE), sort them back; MSE against the true embeddings, averaged
  over the steps. Edge masking and 50% patch dropout as appendix A.2 (see
  ``ebm_pretrain.sorting``); the loss covers the kept tokens, the only ones
  whose embeddings enter the network."""

  def __post_init__(self):
    super().__post_init__()
    self.kwargs = sorting.settings(self.config.task_kwargs)

  def _problem(self, images, rng):
    """(energy_fn over the kept tokens' embeddings, shuffled start, true, kept indices,
    the table of all N embeddings)."""
    k_reg, k_perm = jax.random.split(rng)
    gh, gw = self.backbone.patch_grid(images.shape[1:3])
    posemb = models.posemb_sincos_2d(gh, gw, self.backbone.width)[0]  # [N, D]
    patch = models.decode_variant(self.config.model.variant)["patch_size"]
    images, keep = sorting.regularise(k_reg, images, patch, self.kwargs["keep_ratio"],
                                      self.kwargs["edge_mask"])
    start, true = sorting.shuffled_posemb(k_perm, posemb, keep)

    def energy_fn(model_params, pe):
      return self.model.apply({"params": model_params}, images, posemb=pe, keep=keep)
    return energy_fn, start, true, keep, posemb

  def _restoration(self, batch, rng):
    energy_fn, start, true, _, _ = self._problem(batch["image"], rng)
    return energy_fn, start, true, "mse"

  def eval_sums(self, params, model_state, batch, rng):
    """Per stage (shuffled, each step): summed embedding MSE and the fraction of
    tokens whose embedding is nearest to their own position's."""
    energy_fn, start, true, keep, posemb = self._problem(batch["image"], rng)
    chain = energy.restore(energy_fn, params["model"], start, self.alpha(params),
                           self.config.inner_steps, unroll=self.config.unroll)
    w = batch["valid"].astype(jnp.float32)
    out = {"count": jnp.sum(w)}
    stages = [("shuffled", start)] + [(f"step_{n + 1}", chain[n]) for n in range(chain.shape[0])]
    for name, pe in stages:
      out[f"mse_{name}"] = jnp.sum(w * jnp.mean((pe - true) ** 2, axis=(1, 2)))
      out[f"sorted_{name}"] = jnp.sum(w * sorting.sorted_fraction(pe, posemb, keep))
    return out

  def eval_summary(self, totals: dict[str, float]) -> dict[str, float]:
    n = max(totals.get("count", 0.0), 1.0)
    return {f"eval/pe_{k}": v / n for k, v in totals.items() if k != "count"}


class ClassifierHead(nn.Module):
  """Linear classifier on backbone features; with ``batchnorm``, preceded by a
  BatchNorm without affine parameters (MAE's linear probing)."""
  num_classes: int
  batchnorm: bool = False
  init_std: float = 2e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, train: bool = False):
    if self.batchnorm:
      features = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                              momentum=0.9, epsilon=1e-6, dtype=jnp.float32, name="norm")(
                                  features.astype(jnp.float32))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(self.init_std),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(features)


@dataclasses.dataclass
class SupervisedObjective:
  """Softmax cross-entropy of the backbone plus a linear classifier: fine-tuning
  (paper Table A: mixup/cutmix, label smoothing, drop path, layer-wise lr decay),
  linear probing (``freeze_backbone``, BatchNorm head), training from scratch,
  and the benchmark's reference step."""
  config: Any

  def __post_init__(self):
    c = self.config
    self.backbone = models.get_backbone(c.model.name, c.model.variant, **config_lib.model_kwargs(c))
    self.head = ClassifierHead(c.num_classes, batchnorm=c.get("head_batchnorm", False),
                               init_std=c.get("head_init_std", 2e-5), dtype=config_lib.DTYPES[c.dtype],
                               param_dtype=config_lib.DTYPES[c.param_dtype])
    self.freeze_backbone = c.get("freeze_backbone", False)

  def _features(self, params, images, train, rng):
    if self.freeze_backbone:  # linear probing: no drop path, no backbone gradients
      return jax.lax.stop_gradient(self.backbone.apply({"params": params["backbone"]}, images))
    rngs = {"dropout": rng} if train else None
    return self.backbone.apply({"params": params["backbone"]}, images, train=train, rngs=rngs)

  def init(self, rng, images):
    k1, k2 = jax.random.split(rng)
    backbone = self.backbone.init(k1, images)["params"]
    features = self.backbone.apply({"params": backbone}, images)
    return {"backbone": backbone, "head": self.head.init(k2, features)["params"]}

  def init_model_state(self, rng, images):
    features = jax.eval_shape(lambda: self.backbone.init_with_output(rng, images)[0])
    variables = self.head.init(rng, jnp.zeros(features.shape, features.dtype))
    return {k: v for k, v in variables.items() if k != "params"}

  def frozen(self, path: str) -> bool:
    return self.freeze_backbone and path.startswith("backbone/")

  def lr_multipliers(self, params):
    """Layer-wise lr decay (BEiT/MAE): decay ** (num_layers - layer of the param)."""
    decay = self.config.get("layer_decay", 1.0)
    if decay == 1.0:
      return None
    m = self.config.model

    def factor(path, _):
      p = path_str(path)
      if not p.startswith("backbone/"):
        return 1.0
      i, n = models.layer_id(m.name, m.variant, p[len("backbone/"):])
      return float(decay ** (n - i))
    return jax.tree_util.tree_map_with_path(factor, params)

  def init_from(self, params, path: str, log=print):
    """``params`` with the backbone of the checkpoint at ``path`` (an energy
    pretraining or another fine-tuning run); the classifier head stays fresh."""
    # (.get: the checkpoint is checked against the config before the params are read.)
    return dict(params, backbone=checkpoints.pretrained_backbone(
        self.config, params.get("backbone"), path,
                                                      log))

  def logits(self, params, model_state, images, train=False, rng=None):
    features = self._features(params, images, train, rng)
    variables = {"params": params["head"], **model_state}
    if train and model_state:
      logits, new_state = self.head.apply(variables, features, train=True,
                                          mutable=list(model_state))
      return logits.astype(jnp.float32), dict(new_state)
    return self.head.apply(variables, features, train=train).astype(jnp.float32), model_state

  def loss(self, params, model_state, batch, rng):
    c = self.config
    k_mix, k_drop = jax.random.split(rng)
    mix = c.mixup.to_dict() if c.get("mixup") else dict(mixup_alpha=0.0, cutmix_alpha=0.0)
    images, targets, _ = mixing.mixup_cutmix(
        k_mix, batch["image"], batch["label"], num_classes=c.num_classes,
        smoothing=c.get("label_smoothing", 0.0), **mix)
    logits, model_state = self.logits(params, model_state, images, train=True, rng=k_drop)
    w = batch["valid"].astype(jnp.float32)
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    acc = _weighted_mean(jnp.argmax(logits, -1) == batch["label"], w)
    return _weighted_mean(ce, w), ({"accuracy": acc}, model_state)

  def eval_sums(self, params, model_state, batch, rng):
    logits, _ = self.logits(params, model_state, batch["image"])
    w = batch["valid"].astype(jnp.float32)
    labels = jnp.maximum(batch["label"], 0)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return {"correct": jnp.sum(w * (jnp.argmax(logits, -1) == labels)),
            "loss": jnp.sum(w * ce), "count": jnp.sum(w)}

  def eval_summary(self, totals: dict[str, float]) -> dict[str, float]:
    n = max(totals.get("count", 0.0), 1.0)
    return {"eval/top1": totals["correct"] / n, "eval/loss": totals["loss"] / n}


OBJECTIVES: dict[str, Callable[[Any], Any]] = {"energy": EnergyObjective,
                                               "supervised": SupervisedObjective}


def get_objective(config):
  if config.objective not in OBJECTIVES:
    raise config_lib.ConfigError(f"config.objective: unknown {config.objective!r}; valid: "
                                 f"{', '.join(sorted(OBJECTIVES))}")
  if config.objective == "energy" and config.get("task") == config_lib.SORTING:
    return SortingObjective(config)
  if config.objective == "energy" and autoencoders.is_baseline(config.get("task", "")):
    return autoencoders.get(config)  # the AE / MAE baselines, by task name
  return OBJECTIVES[config.objective](config)
