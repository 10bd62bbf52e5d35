"""Softmax cross-entropy of the backbone plus a linear classifier: fine-tuning
(paper Table A: mixup/cutmix, label smoothing, drop path, layer-wise lr decay),
linear probing (``freeze_backbone``, BatchNorm head), training from scratch,
and the benchmark's reference step."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebm_pretrain import mixing
from ebm_pretrain.errors import fail
from ebm_pretrain.losses import weighted_mean
from ebm_pretrain.objectives.base import (
  DTYPES,
  Base,
  check_layer_decay,
  get_backbone,
  layer_decay_multipliers,
)

BATCHNORM_EPS = 1e-6  # the linear probe's BatchNorm (export folds it with the same eps)


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
                              momentum=0.9, epsilon=BATCHNORM_EPS, dtype=jnp.float32, name="norm")(
                                  features.astype(jnp.float32))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(self.init_std),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(features)


@dataclasses.dataclass
class SupervisedObjective(Base):

  def __post_init__(self):
    c = self.config
    self.backbone = get_backbone(c)
    self.head = ClassifierHead(c.num_classes, batchnorm=c.head_batchnorm,
                               init_std=c.head_init_std, dtype=DTYPES[c.dtype],
                               param_dtype=DTYPES[c.param_dtype])
    self.freeze_backbone = c.freeze_backbone

  @classmethod
  def defaults(cls, config) -> None:
    """The classifier's block (values: the paper's fine-tuning, Table A)."""
    config.num_classes = 1000
    config.head_init_std = 2e-5
    config.head_batchnorm = False  # MAE's linear probe: BatchNorm without affine before the head
    config.freeze_backbone = False  # linear probing
    config.layer_decay = 0.75     # on a loaded backbone only
    config.label_smoothing = 0.1
    config.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                  switch_prob=0.5, prob=1.0))

  @classmethod
  def check(cls, config) -> None:
    if config.num_classes < 2:
      fail("num_classes", f"must be >= 2, got {config.num_classes}")
    check_layer_decay(config)
    if not 0 <= config.label_smoothing < 1:
      fail("label_smoothing", f"must be in [0, 1), got {config.label_smoothing}")

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
    return layer_decay_multipliers(self.config, params)

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
    images, targets, _ = mixing.mixup_cutmix(
        k_mix, batch["image"], batch["label"], num_classes=c.num_classes,
        smoothing=c.label_smoothing, **c.mixup.to_dict())
    logits, model_state = self.logits(params, model_state, images, train=True, rng=k_drop)
    w = batch["valid"].astype(jnp.float32)
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    acc = weighted_mean(jnp.argmax(logits, -1) == batch["label"], w)
    return weighted_mean(ce, w), ({"accuracy": acc}, model_state)

  def predict_fns(self) -> dict:
    return dict(super().predict_fns(),
                logits=lambda params, model_state, images: self.logits(params, model_state,
                                                                        images)[0])

  def export_head(self, params, model_state) -> dict:
    """timm's ``head.weight`` [classes, D] / ``head.bias``; a BatchNorm before the
    head (linear probing) folded in: W (x − μ)/σ + b."""
    dense = params["head"]["dense"]
    w, b = np.asarray(dense["kernel"], np.float64), np.asarray(dense["bias"], np.float64)
    stats = model_state.get("batch_stats", {}).get("norm")
    if stats is not None:
      inv = 1.0 / np.sqrt(np.asarray(stats["var"], np.float64) + BATCHNORM_EPS)
      b = b - (np.asarray(stats["mean"], np.float64) * inv) @ w
      w = w * inv[:, None]
    return {"state": {"head.weight": w.T.astype(np.float32), "head.bias": b.astype(np.float32)},
            "kwargs": {"num_classes": int(self.config.num_classes)}}

  def console_metrics(self) -> list[str]:
    return ["loss", "accuracy"]

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"top1": dict(type="top1")}
