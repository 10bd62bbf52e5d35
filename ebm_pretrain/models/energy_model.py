"""Energy model: any backbone followed by a bias-free linear head (paper §2.2).

E(x) = h(ψ(x)), one scalar per example. After pretraining the head is dropped
and ``params["backbone"]`` is the feature extractor to fine-tune.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class EnergyModel(nn.Module):
  """``apply(variables, x) -> energies [B]`` in float32."""
  backbone: nn.Module
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, **backbone_kwargs):
    features = self.backbone(x, train=train, **backbone_kwargs)
    energy = nn.Dense(1, use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="energy_head")(features)
    return energy[:, 0].astype(jnp.float32)


def energy_fn_of(model: EnergyModel, *, train: bool = False, rngs=None):
  """The pure ``energy_fn(params, x) -> [B]`` that ``ebm_pretrain.energy`` wants."""
  def energy_fn(params, x):
    return model.apply({"params": params}, x, train=train, rngs=rngs)
  return energy_fn
