"""The study harness: a grid of pretraining methods x seeds x evaluations, run
cell by cell (resumable), and a report made from the cells' JSON alone.

  python -m ebm_pretrain.study run --grid=configs/study/fashion_mnist.py --out=results/fashion_mnist
  python -m ebm_pretrain.study report --out=results/fashion_mnist

A grid is a config (``configs/study/*.py``): ``methods`` ({name: the pretraining
config's ``:task=`` argument; "" = no pretraining, the scratch baseline}),
``method_overrides`` ({method: config overrides}, e.g. N), ``seeds`` ({method:
[seeds]}, ``default`` for the rest), ``evals`` ({name:
dict(kind=finetune|knn|linear_probe, ...)}), the base configs and the overrides
every run gets. Each cell (one pretraining, or one evaluation of one method and
seed) writes ``OUT/cells/<id>.json``: its full config, the commit, the seed, the
wall time, img/s and every metric. A cell whose JSON exists is skipped; an
interrupted pretraining or fine-tuning resumes from its checkpoint in
``OUT/runs`` (not committed). ``--only=PATTERN`` (fnmatch on the cell id) runs a
subset.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from ebm_pretrain.trees import dotted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Grids and cells.
# ----------------------------------------------------------------------------
def load_config_file(spec: str):
  """``path/to/config.py[:arg]`` -> its ``get_config(arg)`` (paths relative to the repo)."""
  path, _, arg = spec.partition(":")
  path = path if os.path.isabs(path) else os.path.join(REPO, path)
  module_spec = importlib.util.spec_from_file_location(
      "grid_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


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
      if task:
        out.append(Cell("pretrain", method, seed))
      out += [Cell(e.kind, method, seed, name) for name, e in grid.evals.items()]
  return out


# ----------------------------------------------------------------------------
# Running a cell.
# ----------------------------------------------------------------------------
def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _img_per_s(workdir: str) -> float | None:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  speeds = [r["img_per_s"] for r in rows if "img_per_s" in r][1:]  # the first includes compiling
  return float(np.median(speeds)) if speeds else None


class Runner:

  def __init__(self, grid, out: str):
    self.grid, self.out = grid, out
    self.runs = os.path.join(out, "runs")

  def pretrain_dir(self, method: str, seed: int) -> str:
    return os.path.join(self.runs, f"pretrain_{method}_s{seed}")

  def _pretrain_config(self, method: str, seed: int):
    task = self.grid.methods[method] or self.grid.scratch_task
    c = load_config_file(f"{self.grid.pretrain_config}:{self.grid.pretrain_arg},task={task}")
    with_overrides(c, self.grid.overrides.to_dict())
    with_overrides(c, self.grid.pretrain_overrides.to_dict())
    with_overrides(c, self.grid.method_overrides.to_dict().get(method, {}))
    c.seed = seed
    return c

  def run(self, cell: Cell) -> dict:
    from ebm_pretrain import train
    g = self.grid
    if cell.kind == "pretrain":
      config, workdir = self._pretrain_config(cell.method, cell.seed), self.pretrain_dir(
          cell.method, cell.seed)
      _, metrics = train.train_and_evaluate(config, workdir)
      return dict(config=config.to_dict(), metrics=metrics, img_per_s=_img_per_s(workdir))
    e = g.evals[cell.eval]
    pre = self.pretrain_dir(cell.method, cell.seed) if g.methods[cell.method] else ""
    if cell.kind == "finetune":
      arg = ",".join(filter(None, [e.arg, f"init={pre}" if pre else ""]))
      config = load_config_file(f"{g.finetune_config}:{arg}")
      with_overrides(config, g.overrides.to_dict())
      with_overrides(config, e.to_dict().get("overrides", {}))
      config.seed = cell.seed
      workdir = os.path.join(self.runs, f"{cell.eval}_{cell.method}_s{cell.seed}")
      _, metrics = train.train_and_evaluate(config, workdir)
      return dict(config=config.to_dict(), metrics=metrics, img_per_s=_img_per_s(workdir))
    return self._feature_eval(cell, e, pre)

  def _feature_eval(self, cell: Cell, e, pre: str) -> dict:
    """kNN / linear probe of a pretraining's backbone, or of a random one (scratch)."""
    import jax
    from ebm_pretrain import evaluators, objectives, pretrained
    if pre:
      model = pretrained.load(pre)
      config, objective, params, state = model.config, model.objective, model.params, \
          model.model_state
    else:  # the features of a freshly initialised model of the pretraining config
      config = self._pretrain_config(cell.method, cell.seed)
      objective = objectives.get(config)
      d = config.data
      params = objective.init(jax.random.PRNGKey(config.seed),
                              np.zeros((1, d.image_size, d.image_size, d.channels), np.float32))
      state = {}
    with_overrides(config, self.grid.overrides.to_dict())
    spec = {k: v for k, v in e.to_dict().items() if k != "kind"}
    n = jax.device_count()
    spec.update(type=cell.kind, every=0, prefix="eval", split=config.data.eval_split,
                batch_size=max(n, spec.get("batch_size", 500) // n * n))
    spec.setdefault("examples", -1)
    ev = evaluators.get_class(cell.kind)(cell.eval, spec, config, objective,
                                         evaluators.Context.local())
    return dict(config=config.to_dict(), metrics=ev(params, state), evaluator=spec)


def run(grid_spec: str, out: str, only: str = "*", log=print) -> None:
  grid = load_config_file(grid_spec)
  todo = [c for c in cells(grid) if fnmatch.fnmatch(c.id, only)]
  os.makedirs(os.path.join(out, "cells"), exist_ok=True)
  runner, commit, spent, done_here = Runner(grid, out), _commit(), 0.0, 0
  for i, cell in enumerate(todo):
    path = os.path.join(out, "cells", cell.file)
    if os.path.exists(path):
      log(f"[{i + 1}/{len(todo)}] {cell.id}: done, skipped")
      continue
    left = sum(not os.path.exists(os.path.join(out, "cells", c.file)) for c in todo[i:])
    eta = f", ETA {(spent / done_here) * left / 60:.0f} min" if done_here else ""
    log(f"[{i + 1}/{len(todo)}] {cell.id}: running ({left} cells left{eta})", flush=True)
    t = time.time()
    result = runner.run(cell)
    wall = time.time() - t
    record = dict(cell=dataclasses.asdict(cell), id=cell.id, commit=commit, seed=cell.seed,
                  wall_s=wall, grid=grid_spec, **result)
    from ebm_pretrain import fs
    fs.write_text(path, json.dumps(record, indent=1, sort_keys=True, default=float))
    spent, done_here = spent + wall, done_here + 1
    log(f"[{i + 1}/{len(todo)}] {cell.id}: {wall / 60:.1f} min, wrote {path}", flush=True)


# ----------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------
def _records(out: str) -> list[dict]:
  folder = os.path.join(out, "cells")
  return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
          if f.endswith(".json")]


def _headline(record: dict) -> float | None:
  """The number a cell is judged by: top-1 of an evaluation; none for a pretraining."""
  m = record["metrics"]
  kind = record["cell"]["kind"]
  if kind == "finetune":
    return m.get("eval/top1")
  if kind in ("knn", "linear_probe"):
    return m.get(f"eval/{record['cell']['eval']}_top1")
  return None


def summary(records: list[dict]) -> dict[str, dict[str, list[float]]]:
  """{eval: {method: [top-1 per seed, in seed order]}}."""
  out: dict[str, dict[str, list[tuple[int, float]]]] = {}
  for r in records:
    v = _headline(r)
    if v is not None:
      out.setdefault(r["cell"]["eval"], {}).setdefault(r["cell"]["method"], []).append(
          (r["seed"], float(v)))
  return {e: {m: [v for _, v in sorted(vs)] for m, vs in ms.items()} for e, ms in out.items()}


def _fmt(values: list[float]) -> str:
  mean = 100 * float(np.mean(values))
  if len(values) == 1:
    return f"{mean:.2f} (1 seed)"
  return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f} ({len(values)} seeds)"


def report(out: str) -> str:
  """Writes OUT/table.md and OUT/top1.png from OUT/cells/*.json; returns the table."""
  records = _records(out)
  s = summary(records)
  evals = sorted(s)
  methods = sorted({m for ms in s.values() for m in ms})
  split = sorted({r["config"]["data"]["eval_split"] for r in records if r["cell"]["kind"] != "pretrain"})
  lines = [f"Top-1 (%) on the `{', '.join(split)}` split: mean ± std over seeds.", "",
           "| method | " + " | ".join(evals) + " |", "| --- |" + " --- |" * len(evals)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(_fmt(s[e][m]) if m in s[e] else "-" for e in evals)
                 + " |")
  pre = [r for r in records if r["cell"]["kind"] == "pretrain"]
  if pre:
    lines += ["", "| pretraining | seed | wall (min) | img/s | final loss |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(pre, key=lambda r: (r["cell"]["method"], r["seed"])):
      lines.append(f"| {r['cell']['method']} | {r['seed']} | {r['wall_s'] / 60:.1f} | "
                   f"{r['img_per_s'] or 0:.0f} | {r['metrics'].get('loss', float('nan')):.4f} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table)
  _plot(s, evals, methods, os.path.join(out, "top1.png"))
  return table


def _plot(s, evals, methods, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, max(1, len(evals)), figsize=(4 * max(1, len(evals)), 3.5),
                           squeeze=False)
  for ax, e in zip(axes[0], evals):
    ms = [m for m in methods if m in s[e]]
    means = [100 * np.mean(s[e][m]) for m in ms]
    errs = [100 * np.std(s[e][m], ddof=1) if len(s[e][m]) > 1 else 0.0 for m in ms]
    ax.bar(range(len(ms)), means, yerr=errs, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(ms)), ms, rotation=60, ha="right", fontsize=8)
    ax.set_title(e)
    ax.set_ylabel("top-1 (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: byte-stable
  plt.close(fig)


def main(argv: list[str]) -> None:
  import argparse
  p = argparse.ArgumentParser(prog="python -m ebm_pretrain.study")
  sub = p.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run")
  r.add_argument("--grid", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--only", default="*")
  rep = sub.add_parser("report")
  rep.add_argument("--out", required=True)
  a = p.parse_args(argv)
  from ebm_pretrain.data.sources import DataSourceError
  from ebm_pretrain.errors import CheckpointError, ConfigError
  try:
    if a.command == "run":
      run(a.grid, a.out, a.only)
      print(report(a.out))
    else:
      print(report(a.out))
  except (ConfigError, CheckpointError, DataSourceError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main(sys.argv[1:])
