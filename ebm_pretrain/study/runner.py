"""Running the cells of a grid: each pretraining, fine-tuning, kNN or linear
probe writes ``OUT/cells/<id>.json`` (its full config, the commit, whether the
tree differed from it and a hash of that diff, the XLA flags, the seed, the
wall time, img/s and every metric; a pretraining its final checkpoint's step
and hash, an evaluation the pretrained checkpoint it read, refusing one whose
cell is not recorded or whose checkpoint changed since). A cell whose JSON exists is skipped; an
interrupted pretraining or fine-tuning resumes from its checkpoint in
``OUT/runs`` (not committed). The grid itself goes to ``OUT/grid.json``, so
that the report needs nothing but OUT."""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import subprocess
import time

import numpy as np

from ebm_pretrain.study.grid import (EVAL_FILTERS, PIXELS, REPO, Cell, cells, has_pretraining,
                                     load_config_file, with_overrides)


def _source(out: str) -> dict:
  """What ran a cell: the commit, whether the tracked files differed from it
  (``dirty``) and a hash of that difference, and the XLA flags in force. Study
  output is left out of the difference, both the grid's own ``out`` and the
  committed ``results/`` folders: a run rewrites its ``grid.json``, and a
  test-split grid's runs rewrite their pretraining grid's."""
  def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout
  outputs = {os.path.relpath(os.path.abspath(out), REPO), "results"}
  outside = ["--", ".", *(f":(exclude){rel}" for rel in sorted(outputs)
                          if not rel.startswith(".."))]
  try:
    commit, diff = git("rev-parse", "HEAD").decode().strip(), git("diff", "HEAD", *outside)
  except (OSError, subprocess.CalledProcessError):
    commit, diff = "unknown", None
  return dict(commit=commit, dirty=bool(diff) if diff is not None else None,
              diff_sha256=hashlib.sha256(diff).hexdigest() if diff else None,
              xla_flags=os.environ.get("XLA_FLAGS", ""))


def speed(workdir: str, batch_size: int) -> dict:
  """``img_per_s``: the median over a run's log intervals (the first includes
  compiling), which a pause or a busy neighbour barely moves; ``train_images``:
  the images its steps saw. Their ratio is the run's time at its own speed."""
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  speeds = [r["img_per_s"] for r in rows if "img_per_s" in r][1:]
  return dict(img_per_s=float(np.median(speeds)) if speeds else None,
              train_images=max((r["step"] for r in rows), default=0) * batch_size)


def checkpoint_digest(workdir: str) -> dict:
  """The step a reader of ``workdir`` gets (its newest checkpoint) and a SHA-256
  of that step folder's files (relative paths and bytes, in sorted order)."""
  from ebm_pretrain import checkpoints
  found = checkpoints.find(workdir)
  root = os.path.join(found.checkpoints_dir, str(found.step))
  h = hashlib.sha256()
  for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(dirpath, name)
      h.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        h.update(f.read())
  return dict(step=int(found.step), sha256=h.hexdigest())


# Pretraining keys that only say where it is evaluated: a pretraining reused by a
# grid that differs in them alone (the test-split run) is the same run.
EVAL_ONLY_KEYS = ("data.eval_split",)


class Runner:
  """``pretrained_from``: another OUT whose finished pretrainings this grid
  evaluates instead of running its own (the final test-split run reuses the
  validation run's: same configs but for ``EVAL_ONLY_KEYS``, checked)."""

  def __init__(self, grid, out: str, pretrained_from: str = ""):
    self.grid, self.out, self.pretrained_from = grid, out, pretrained_from
    self.runs = os.path.join(out, "runs")

  def pretrain_dir(self, method: str, seed: int) -> str:
    runs = os.path.join(self.pretrained_from, "runs") if self.pretrained_from else self.runs
    return os.path.join(runs, f"pretrain_{method}_s{seed}")

  def reused_pretraining(self, cell: Cell) -> dict:
    """The ``pretrained_from`` record of a pretraining cell, after checking that
    it is finished and was made with this grid's config (a ConfigError otherwise)."""
    from ebm_pretrain.errors import ConfigError
    from ebm_pretrain.workdir import as_json, config_changes
    src = os.path.join(self.pretrained_from, "cells", cell.file)
    if not os.path.exists(src) or not os.path.isdir(self.pretrain_dir(cell.method, cell.seed)):
      raise ConfigError(f"{cell.id} is not finished in {self.pretrained_from} (no {src} or "
                        f"no run): run it there first, or run without --pretrained_from")
    record = json.load(open(src))
    changes = {k: v for k, v in config_changes(
        record["config"], as_json(self.pretrain_config(cell.method, cell.seed))).items()
               if k not in EVAL_ONLY_KEYS}
    if changes:
      raise ConfigError(f"{cell.id} in {self.pretrained_from} was made with another config: "
                        + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return dict(record, reused_from=src)

  def read_pretraining(self, method: str, seed: int) -> dict:
    """What an evaluation of ``method``'s pretraining reads: refused (ConfigError)
    unless that pretraining's cell is recorded, here or in ``pretrained_from``
    (a run still training has none), and unless its checkpoint is the one the
    cell recorded; returns the checkpoint's path, step and hash."""
    from ebm_pretrain.errors import ConfigError
    cell = Cell("pretrain", method, seed)
    src = os.path.join(self.pretrained_from or self.out, "cells", cell.file)
    if not os.path.exists(src):
      raise ConfigError(f"{cell.id} has no finished cell ({src}): its pretraining is still "
                        "running or was never run; run it first")
    path = self.pretrain_dir(method, seed)
    got = dict(checkpoint_digest(path), path=path)
    recorded = json.load(open(src)).get("checkpoint")
    if recorded and (recorded["step"], recorded["sha256"]) != (got["step"], got["sha256"]):
      raise ConfigError(f"{path} holds step {got['step']} (sha256 {got['sha256'][:12]}), not "
                        f"the step {recorded['step']} (sha256 {recorded['sha256'][:12]}) its "
                        f"cell {src} recorded: the pretraining changed since")
    return got

  def pretrain_config(self, method: str, seed: int):
    """The config ``method``'s pretraining (or, for scratch and the pixels, its
    random-init features) runs with at ``seed``."""
    task = self.grid.methods[method]
    task = task if has_pretraining(task) else self.grid.scratch_task
    arg = ",".join(filter(None, [self.grid.pretrain_arg, f"task={task}",
                                 self.method_arg(method)]))
    c = load_config_file(f"{self.grid.pretrain_config}:{arg}")
    with_overrides(c, self.grid.overrides.to_dict())
    with_overrides(c, self.grid.pretrain_overrides.to_dict())
    with_overrides(c, self.grid.method_overrides.to_dict().get(method, {}))
    c.seed = seed
    return c

  def method_arg(self, method: str) -> str:
    """The config argument ``method`` adds to its pretraining's and fine-tunings'
    (``method_args``: e.g. ``model=convnext``, another backbone family)."""
    return self.grid.get("method_args", {}).get(method, "")

  def run(self, cell: Cell) -> dict:
    from ebm_pretrain import train
    g = self.grid
    if cell.kind == "pretrain":
      config, workdir = self.pretrain_config(cell.method, cell.seed), self.pretrain_dir(
          cell.method, cell.seed)
      _, metrics = train.train_and_evaluate(config, workdir)
      return dict(config=config.to_dict(), metrics=metrics, checkpoint=checkpoint_digest(workdir),
                  **speed(workdir, config.batch_size))
    e = g.evals[cell.eval]
    pretrained_method = has_pretraining(g.methods[cell.method])
    pre = self.pretrain_dir(cell.method, cell.seed) if pretrained_method else ""
    read = {}
    if pre:
      if self.pretrained_from:  # (checked here too: --only may leave its cell out)
        self.reused_pretraining(Cell("pretrain", cell.method, cell.seed))
      read = dict(pretrained_checkpoint=self.read_pretraining(cell.method, cell.seed))
    return dict(self._evaluate(cell, e, pre), **read)

  def finetune_config(self, cell: Cell, pre: str):
    """The config of a fine-tuning cell, from the pretraining in ``pre`` ("": from
    scratch)."""
    g, e = self.grid, self.grid.evals[cell.eval]
    arg = ",".join(filter(None, [e.arg, self.method_arg(cell.method),
                                 f"init={pre}" if pre else ""]))
    config = load_config_file(f"{g.finetune_config}:{arg}")
    with_overrides(config, g.overrides.to_dict())
    with_overrides(config, e.to_dict().get("overrides", {}))
    config.seed = cell.seed
    return config

  def _evaluate(self, cell: Cell, e, pre: str) -> dict:
    from ebm_pretrain import train
    if cell.kind == "finetune":
      config = self.finetune_config(cell, pre)
      workdir = os.path.join(self.runs, f"{cell.eval}_{cell.method}_s{cell.seed}")
      _, metrics = train.train_and_evaluate(config, workdir)
      return dict(config=config.to_dict(), metrics=metrics,
                  **speed(workdir, config.batch_size))
    return self._feature_eval(cell, e, pre)

  def _feature_eval(self, cell: Cell, e, pre: str) -> dict:
    """kNN / linear probe of a pretraining's backbone, of a random one (scratch),
    or of the pixels."""
    import jax
    from ebm_pretrain import evaluators, objectives, pretrained
    if pre:
      model = pretrained.load(pre)
      config, objective, params, state = model.config, model.objective, model.params, \
          model.model_state
    elif self.grid.methods[cell.method] == PIXELS:
      config, objective, params, state = self.pretrain_config(cell.method, cell.seed), \
          _Pixels(), {}, {}
    else:  # the features of a freshly initialised model of the pretraining config
      config = self.pretrain_config(cell.method, cell.seed)
      objective = objectives.get(config)
      d = config.data
      params = objective.init(jax.random.PRNGKey(config.seed),
                              np.zeros((1, d.image_size, d.image_size, d.channels), np.float32))
      state = {}
    with_overrides(config, self.grid.overrides.to_dict())
    spec = {k: v for k, v in e.to_dict().items() if k not in ("kind", *EVAL_FILTERS)}
    n = jax.device_count()
    spec.update(type=cell.kind, every=0, prefix="eval", split=config.data.eval_split,
                batch_size=max(n, spec.get("batch_size", 500) // n * n))
    spec.setdefault("examples", -1)
    cls = evaluators.get_class(cell.kind)
    problem = cls.check(config, type(objective), dict(cls.options, **spec))
    if problem:
      from ebm_pretrain.errors import ConfigError
      raise ConfigError(f"grid eval {cell.eval}: {cell.kind} {problem}")
    ev = cls(cell.eval, spec, config, objective, evaluators.Context.local())
    return dict(config=config.to_dict(), metrics=ev(params, state), evaluator=spec)


class _Pixels:
  """Features = the normalised pixels, flattened: what a feature evaluation
  reaches with no representation learning at all."""

  def features(self, params, model_state, images):
    return images.reshape(images.shape[0], -1)

  def token_features(self, params, model_state, images, *, block, pool):
    """(No tokens: the pixels in every diagnostic column, for reference.)"""
    return self.features(params, model_state, images)


def run(grid_spec: str, out: str, only: str = "*", log=print, pretrained_from: str = "") -> None:
  grid = load_config_file(grid_spec)
  todo = [c for c in cells(grid) if fnmatch.fnmatch(c.id, only)]
  os.makedirs(os.path.join(out, "cells"), exist_ok=True)
  from ebm_pretrain import fs
  fs.write_text(os.path.join(out, "grid.json"),
                json.dumps(dict(spec=grid_spec, **grid.to_dict()), indent=1, sort_keys=True))
  runner, source, spent, done_here = Runner(grid, out, pretrained_from), _source(out), 0.0, 0
  import jax
  device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"  # which machine ran it
  # The pretrainings' step times (study cost) come with them.
  source_cost = os.path.join(pretrained_from, "cost.json")
  if pretrained_from and os.path.exists(source_cost):
    fs.write_text(os.path.join(out, "cost.json"), open(source_cost).read())
  for i, cell in enumerate(todo):
    path = os.path.join(out, "cells", cell.file)
    if os.path.exists(path):
      log(f"[{i + 1}/{len(todo)}] {cell.id}: done, skipped")
      continue
    if cell.kind == "pretrain" and pretrained_from:
      fs.write_text(path, json.dumps(runner.reused_pretraining(cell), indent=1, sort_keys=True))
      log(f"[{i + 1}/{len(todo)}] {cell.id}: reused from {pretrained_from}", flush=True)
      continue
    left = sum(not os.path.exists(os.path.join(out, "cells", c.file)) for c in todo[i:])
    eta = f", ETA {(spent / done_here) * left / 60:.0f} min" if done_here else ""
    log(f"[{i + 1}/{len(todo)}] {cell.id}: running ({left} cells left{eta})", flush=True)
    t = time.time()
    result = runner.run(cell)
    wall = time.time() - t
    if not result.get("metrics"):  # never a cell without its numbers (rerun: it resumes)
      raise RuntimeError(f"{cell.id}: its run returned no metrics; not recorded")
    record = dict(cell=dataclasses.asdict(cell), id=cell.id, **source, seed=cell.seed,
                  wall_s=wall, grid=grid_spec, device=device, **result)
    fs.write_text(path, json.dumps(record, indent=1, sort_keys=True, default=float))
    spent, done_here = spent + wall, done_here + 1
    log(f"[{i + 1}/{len(todo)}] {cell.id}: {wall / 60:.1f} min, wrote {path}", flush=True)
