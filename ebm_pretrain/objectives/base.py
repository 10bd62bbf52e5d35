"""The ``Objective`` protocol the trainer, the evaluators and ``pretrained`` talk
to, and ``Base``, which gives every objective its defaults (so that nothing asks
``hasattr``).

An objective owns its model and how to initialise it, its loss on a normalised
batch and that loss's gradient, what a trained model offers (``predict_fns``:
big_vision's named predict functions, which ``pretrained``, ``export``,
``restore`` and the evaluators ask for by name), the pictures it draws, the metric names it
shows on the console, the evaluators it is judged by when ``config.evals`` is
empty, its config defaults (``defaults``, applied by ``recipes.set_objective``)
and its config checks (``check``, called by ``validate``). Parameters are one
pytree; ``backbone_path`` says where the backbone sits in it, which is what
fine-tuning, kNN and export carry over.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_pretrain import models, transfer
from ebm_pretrain.errors import fail

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_kwargs(config) -> dict:
  """Everything in ``config.model`` besides name/variant, plus the dtypes: the
  keyword arguments of the backbone factory."""
  kw = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "variant")}
  return dict(kw, dtype=DTYPES[config.dtype], param_dtype=DTYPES[config.param_dtype])


@runtime_checkable
class Objective(Protocol):
  config: Any
  backbone: nn.Module
  backbone_path: tuple[str, ...]

  def init(self, rng, images) -> dict: ...
  def init_model_state(self, rng, images) -> dict: ...
  def loss(self, params, model_state, batch, rng): ...
  def value_and_grad(self, params, model_state, batch, rng): ...
  def frozen(self, path: str) -> bool: ...
  def lr_multipliers(self, params): ...
  def init_from(self, params, path: str, log=print) -> dict: ...
  def backbone_params(self, params) -> dict: ...
  def features(self, params, model_state, images): ...
  def predict_fns(self) -> dict: ...
  def export_head(self, params, model_state) -> dict | None: ...
  def visualize(self, params, batch, rng, model_state=None) -> dict | None: ...
  def console_metrics(self) -> list[str]: ...
  @classmethod
  def default_evals(cls) -> dict[str, dict]: ...


@dataclasses.dataclass
class Base:
  """Defaults for every method of :class:`Objective` but ``init`` and ``loss``.

  ``loss(params, model_state, batch, rng) -> (loss, (metrics, new model_state))``
  takes a normalised batch ``{"image", "label", "valid"}``; ``metrics`` are
  scalars averaged over the log interval.
  """
  config: Any
  backbone_path = ("backbone",)

  # -- config ------------------------------------------------------------------
  @classmethod
  def defaults(cls, config) -> None:
    """Adds, in place, this objective's block: the config keys it reads beyond
    ``schema.base`` (``schema.set_objective`` calls it; ``schema.upgrade`` drops
    a stored key that no block declares)."""

  @classmethod
  def check(cls, config) -> None:
    """Raises ConfigError (``errors.fail``) naming a field this objective cannot take."""

  # -- parameters ---------------------------------------------------------------
  def init_model_state(self, rng, images) -> dict:
    return {}  # non-trained variables (BatchNorm statistics)

  def frozen(self, path: str) -> bool:
    return False

  def lr_multipliers(self, params):
    return None  # per-parameter lr factors (layer-wise decay), or None

  def backbone_params(self, params) -> dict:
    for key in self.backbone_path:
      params = params[key]
    return params

  def init_from(self, params, path: str, log=print) -> dict:
    """``params`` with the backbone of the checkpoint at ``path``; everything else
    (heads, decoders, alpha) stays fresh."""
    backbone = transfer.pretrained_backbone(self.config, self.backbone_params(params), path,
                                               log)

    def put(tree, keys):
      return backbone if not keys else dict(tree, **{keys[0]: put(tree[keys[0]], keys[1:])})
    return put(params, self.backbone_path)

  # -- computation --------------------------------------------------------------
  def loss(self, params, model_state, batch, rng):
    raise NotImplementedError

  def value_and_grad(self, params, model_state, batch, rng):
    return jax.value_and_grad(self.loss, has_aux=True)(params, model_state, batch, rng)

  def features(self, params, model_state, images):
    """Backbone features [B, D] (what kNN and linear probes read)."""
    return self.backbone.apply({"params": self.backbone_params(params)}, images)

  def token_features(self, params, model_state, images, *, block: int | None, pool: str):
    """A ViT backbone's patch tokens as features [B, D], in place of its own
    pooled ones (the kNN / probe ``block`` and ``pool`` options): those of
    ``block`` (None: the final, normed ones), averaged (``gap``) or concatenated
    in patch order (``flat``, which keeps where each patch is)."""
    bound = {"params": self.backbone_params(params)}
    t = (self.backbone.apply(bound, images, tokens=True) if block is None else
         self.backbone.apply(bound, images, block=block))
    return t.mean(1) if pool == "gap" else t.reshape(t.shape[0], -1)

  def predict_fns(self) -> dict:
    """What a trained model offers, by name: each ``fn(params, model_state, images,
    **options)`` on normalised images [B, H, W, C]. ``features`` -> [B, D]
    (every objective); an objective adds what it can: ``logits`` -> [B, ...]
    (a classifier head), ``energy`` -> [B], ``restore`` (``num_steps``) ->
    [N, B, H, W, C], ``corrupt`` (``rng``) -> its training corruption."""
    return {"features": self.features}

  def export_head(self, params, model_state) -> dict | None:
    """``{"state": timm head tensors, "kwargs": timm.create_model kwargs}`` for a
    head timm has (``python -m ebm_pretrain.export``), or None: the backbone alone."""
    return None

  def visualize(self, params, batch, rng, model_state=None) -> dict | None:
    """Named normalised images to draw side by side (``pictures.grid``), or None
    (nothing to draw); ``model_state``: the trainer's (BatchNorm statistics)."""
    return None

  def console_metrics(self) -> list[str]:
    """The training metrics the console line shows, in order (all go to the logs)."""
    return ["loss"]

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    """``config.evals`` when the config leaves it empty."""
    return {}


@dataclasses.dataclass
class EnergyModelBase(Base):
  """What every energy objective holds: the energy model (the backbone and a
  bias-free Dense(1), ``models.get_energy_model``) under ``params["model"]``."""
  backbone_path = ("model", "backbone")

  def __post_init__(self):
    c = self.config
    self.model = models.get_energy_model(c.model.name, c.model.variant, **model_kwargs(c))
    self.backbone = self.model.backbone

  def init(self, rng, images):
    return {"model": self.model.init(rng, images)["params"]}


def check_layer_decay(config) -> None:
  """The check every objective with ``lr_multipliers = layer_decay_multipliers`` runs."""
  if not 0 < config.layer_decay <= 1:
    fail("layer_decay", f"must be in (0, 1], got {config.layer_decay}")


def layer_decay_multipliers(config, params):
  """Layer-wise lr decay (BEiT / MAE ``param_groups_lrd``): ``decay ** (n - i)``
  for a backbone parameter at depth i of n, 1 for everything else (heads,
  necks); None (no factors) without decay or without a loaded backbone
  (``config.init``): the decay protects pretrained features, and from scratch
  every layer takes the full rate, as in MAE's and the paper's baselines."""
  from ebm_pretrain.trees import path_str
  decay = config.layer_decay
  if decay == 1.0 or not config.init:
    return None
  m = config.model

  def factor(path, _):
    p = path_str(path)
    if not p.startswith("backbone/"):
      return 1.0
    i, n = models.layer_id(m.name, m.variant, p[len("backbone/"):])
    return float(decay ** (n - i))
  return jax.tree_util.tree_map_with_path(factor, params)


def get_backbone(config) -> nn.Module:
  return models.get_backbone(config.model.name, config.model.variant, **model_kwargs(config))
