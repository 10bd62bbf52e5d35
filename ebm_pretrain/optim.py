"""The optimizer of a run: AdamW (or LARS for linear probing) with a warmup +
cosine schedule, weight decay on kernels only, optional clipping, the
objective's per-parameter lr factors and frozen parameters."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ebm_pretrain.trees import path_str


def decay_mask(params) -> Any:
  """Weight decay on Dense/Conv kernels only: never on norms, biases, position
  embeddings, the cls token or alpha (MAE / paper Table A)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p).endswith("kernel"), params)


def learning_rate_schedule(config, total_steps: int, steps_per_epoch: float):
  o = config.optim
  peak = o.base_lr * config.batch_size / o.lr_base_batch
  warmup = o.warmup_steps or int(round(o.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                            end_value=o.min_lr)


def scale_by_tree(factors) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-parameter factor. After AdamW (whose
  weight decay is already scaled by the learning rate) this is exactly a
  per-parameter learning rate: layer-wise lr decay."""
  def update(updates, state, params=None):
    return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config, params, objective, schedule) -> optax.GradientTransformation:
  """``params`` may be shapes only; the objective says which parameters are frozen
  and their lr factors (``Objective.frozen``, ``Objective.lr_multipliers``)."""
  o = config.optim
  if o.name == "lars":  # MAE's linear probing
    opt = optax.lars(schedule, weight_decay=o.weight_decay, momentum=o.b1,
                     weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask)
  else:
    opt = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
  factors = objective.lr_multipliers(params)
  if factors is not None:
    opt = optax.chain(opt, scale_by_tree(factors))
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "frozen" if objective.frozen(path_str(p)) else "train", params)
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
