"""Grids and their cells.

A grid is a config (``configs/study/*.py``): ``methods`` ({name: the pretraining
config's ``:task=`` argument; "" = no pretraining, the scratch baseline;
``PIXELS`` = the normalised pixels as features, a reference for kNN and the
linear probe only}),
``method_overrides`` ({method: config overrides}, e.g. N), ``method_args``
({method: config argument} added to its pretraining's and fine-tunings', e.g.
``model=convnext``), ``seeds`` ({method: [seeds]}, ``default`` for the rest),
``evals`` ({name: dict(kind=finetune|knn|linear_probe, ...)}; ``methods=[...]``
/ ``seeds=[...]`` restrict one to some cells, e.g. a learning-rate search;
``diagnostic=True`` reports one apart from the claims), the base configs (a
segmentation fine-tuning's is judged by its mIoU) and the overrides every run
gets, and for the report ``claims`` (the paper's claims as comparisons of two
methods) and ``n_sweep`` ({method: N} for the accuracy-vs-N plot).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

from ebm_pretrain.trees import dotted

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Grid-level keys of an eval, not evaluator options; ``diagnostic=True``: reported
# in a table of its own, not as evidence for the claims.
EVAL_FILTERS = ("methods", "seeds", "diagnostic")
PIXELS = "=pixels"
FEATURE_EVALS = ("knn", "linear_probe")


def has_pretraining(task: str) -> bool:
  """Whether a method with this grid task pretrains (not scratch "", not the pixels)."""
  return task not in ("", PIXELS)


def load_config_file(spec: str):
  """``path/to/config.py[:arg]`` -> its ``get_config(arg)`` (paths relative to the repo)."""
  path, _, arg = spec.partition(":")
  path = path if os.path.isabs(path) else os.path.join(REPO, path)
  module_spec = importlib.util.spec_from_file_location(
      "grid_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def derived(spec: str, methods: dict, seeds: list[int]):
  """Grid ``spec`` with its own ``methods`` and ``seeds`` in place of the base
  grid's (and none of its per-method overrides, sweeps or curves): a grid for
  another claim that keeps everything else of the study's recipe."""
  import ml_collections
  g = load_config_file(spec)
  g.methods = ml_collections.ConfigDict(methods)
  g.method_overrides = ml_collections.ConfigDict()
  g.seeds = ml_collections.ConfigDict(dict(default=list(seeds)))
  for key in ("n_sweep", "compute_curves", "pretrain_lr_search"):
    if key in g:
      del g[key]
  return g


def with_overrides(config, overrides: dict):
  """``config`` with the nested ``overrides`` ({"data": {"holdout": 5000}}) set
  (their keys must exist)."""
  from ebm_pretrain.errors import ConfigError
  for key, value in dotted(overrides).items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"grid override {key!r}: no such config key")
    node[leaf] = value
  return config


@dataclasses.dataclass(frozen=True)
class Cell:
  kind: str           # pretrain | finetune | knn | linear_probe
  method: str
  seed: int
  eval: str = ""      # the evaluation's name (not for pretrain cells)

  @property
  def id(self) -> str:
    base = f"{self.method}/s{self.seed}"
    return f"pretrain/{base}" if self.kind == "pretrain" else f"{self.eval}/{base}"

  @property
  def file(self) -> str:
    return self.id.replace("/", "__") + ".json"


def cells(grid) -> list[Cell]:
  """Every cell, each pretraining before the evaluations that read it."""
  out = []
  for method, task in grid.methods.items():
    for seed in grid.seeds.get(method, grid.seeds["default"]):
      if has_pretraining(task):
        out.append(Cell("pretrain", method, seed))
      for name, e in grid.evals.items():
        if task == PIXELS and e.kind not in FEATURE_EVALS:
          continue
        if method in e.get("methods", [method]) and seed in e.get("seeds", [seed]):
          out.append(Cell(e.kind, method, seed, name))
  return out
