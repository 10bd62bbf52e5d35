"""What every evaluator shares: its settings (one ``config.evals`` entry over the
config's eval defaults), the mesh it runs on, its held-out data, and the loop
that sums per-batch statistics on device (one host transfer per evaluation)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ebm_pretrain.data import normalization, pipeline, sources


@dataclasses.dataclass(frozen=True)
class Context:
  """Where evaluation runs: the trainer's 1-D ``data`` mesh (all processes)."""
  mesh: Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  def to_global(self, local: dict) -> dict:
    """This process's share of a batch -> global arrays sharded along ``data``."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local.items()}

  @classmethod
  def local(cls) -> "Context":
    """All devices of this (single) process: evaluating outside the trainer."""
    return cls(Mesh(np.asarray(jax.devices()), ("data",)))


class Evaluator:
  """One ``config.evals`` entry. ``spec`` holds ``type``, ``every`` (steps; 0: at
  the end only), ``examples`` (-1: all), ``batch_size``, ``split``, ``prefix``
  of the metric names, and the type's own options. A subclass defines ``run``
  (or ``batch_sums`` + ``summary`` for a sum over the held-out images)."""
  options: dict[str, Any] = {}  # the type's own options and their defaults

  def __init__(self, name: str, spec: dict, config, objective, ctx: Context):
    self.name, self.config, self.objective, self.ctx = name, config, objective, ctx
    self.spec = dict(self.options, **spec)
    self.every = int(self.spec["every"])
    self.prefix = self.spec["prefix"]
    self._sums = self._features = None  # compiled on first use
    self._datasets = {}  # (split, examples) -> dataset, built on first use

  @classmethod
  def check(cls, config, objective_cls, spec: dict) -> str | None:
    """What makes this evaluator unusable with this config, or None."""
    return None

  # -- data ---------------------------------------------------------------------
  def dataset(self, split: str | None = None, examples: int | None = None):
    """This process's share of ``split`` (default: the eval split), center-cropped
    at the model's size, in batches of ``batch_size`` (global) padded with
    ``valid=False`` examples."""
    n = self.spec["examples"] if examples is None else examples
    key = (split or self.spec["split"], n)
    if key not in self._datasets:
      self._datasets[key] = self._make_dataset(*key)
    return self._datasets[key]

  def _make_dataset(self, split: str, n: int):
    d = self.config.data
    return pipeline.make_eval_dataset(
        sources.get_source(d, split),
        batch_size=self.spec["batch_size"] // jax.process_count(), image_size=d.image_size,
        channels=d.channels, resize_to=d.eval_resize or d.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_examples=n if n > 0 else None, num_workers=d.num_workers)

  def normalized(self, batch: dict) -> dict:
    d = self.config.data
    return dict(batch, image=normalization.normalize(batch["image"], d.mean, d.std))

  # -- running ------------------------------------------------------------------
  def __call__(self, params, model_state) -> dict[str, float]:
    return {f"{self.prefix}/{k}": float(v) for k, v in self.run(params, model_state).items()}

  def run(self, params, model_state) -> dict[str, float]:
    sums = self._jitted_sums()
    totals = None
    rng = jax.random.PRNGKey(self.config.seed + 1)
    for i, local in enumerate(self.dataset()):
      s = sums(params, model_state, self.ctx.to_global(local), jax.random.fold_in(rng, i))
      totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
    # Scalars become floats; an array total (a confusion matrix) stays an array.
    totals = {k: float(v) if np.ndim(v) == 0 else np.asarray(v)
              for k, v in jax.device_get(totals).items()}
    return self.summary(totals, max(totals.pop("count"), 1.0))

  def _jitted_sums(self) -> Callable:
    if self._sums is None:
      def sums(params, model_state, batch, rng):
        batch = self.normalized(batch)
        out = self.batch_sums(params, model_state, batch, rng)
        out["count"] = jnp.sum(batch["valid"].astype(jnp.float32))
        return out
      self._sums = jax.jit(sums, out_shardings=self.ctx.replicated)
    return self._sums

  def batch_sums(self, params, model_state, batch, rng) -> dict[str, jax.Array]:
    """Per-batch sums over the valid examples (``batch["valid"]``)."""
    raise NotImplementedError

  def summary(self, totals: dict[str, float], count: float) -> dict[str, float]:
    raise NotImplementedError


# The frozen-feature evaluators' (knn, linear_probe) choice of features: None and
# "" read the model's own (objective.features); else a ViT's patch tokens of
# ``block`` (None: the final ones), pooled by ``pool`` (gap | flat; "" = gap).
FEATURE_OPTIONS = dict(block=None, pool="")
POOLS = ("gap", "flat")


def reads_own_features(spec: dict) -> bool:
  """Whether ``spec`` asks for the model's own features (no block, no pool)."""
  return spec.get("block") is None and not spec.get("pool", "")


def feature_options_problem(config, spec: dict) -> str | None:
  """Why ``spec``'s block / pool cannot be read from this config's model, or None."""
  if reads_own_features(spec):
    return None
  block, pool = spec.get("block"), spec.get("pool", "")
  if pool and pool not in POOLS:
    return f"pool={pool!r}; valid: {', '.join(POOLS)} ('' with block=None: the model's own)"
  if config.model.name != "vit":
    return f"block / pool read a ViT's patch tokens; model is {config.model.name!r}"
  if block is not None:
    from ebm_pretrain.models.vit import decode_variant
    depth = decode_variant(config.model.variant)["depth"]
    if not isinstance(block, int) or not -depth <= block < depth:
      return f"block={block!r}: ViT {config.model.variant} has {depth} blocks"
  return None


def features(ev: Evaluator, params, model_state, split: str, examples: int):
  """(features [N, D], labels [N]) of the first ``examples`` (<= 0: all) of ``split``,
  as host numpy arrays on every process."""
  if ev._features is None:
    own, block, pool = reads_own_features(ev.spec), ev.spec.get("block"), ev.spec.get("pool", "")

    def f(params, model_state, batch):
      images = ev.normalized(batch)["image"]
      if own:
        return ev.objective.features(params, model_state, images)
      return ev.objective.token_features(params, model_state, images, block=block,
                                         pool=pool or "gap")
    ev._features = jax.jit(f, out_shardings=ev.ctx.replicated)
  feats, labels = [], []
  replicate = jax.jit(lambda x: x, out_shardings=ev.ctx.replicated)
  for local in ev.dataset(split, examples):
    batch = ev.ctx.to_global(local)
    out = jax.device_get(ev._features(params, model_state, batch))
    valid, label = jax.device_get(replicate((batch["valid"], batch["label"])))
    feats.append(np.asarray(out, np.float32)[valid])
    labels.append(np.asarray(label)[valid])
  return np.concatenate(feats), np.concatenate(labels)
