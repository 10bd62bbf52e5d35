"""What each pretraining costs, measured in one process: the training step of
every pretraining method of a grid, compiled from the config its cells run and
timed in interleaved rounds (``benchmark.time_interleaved``), so a busy
neighbour or a slower machine moves every method alike and the ratios hold.

  python -m ebm_pretrain.study cost --grid=configs/study/fashion_mnist.py --out=results/fashion_mnist

writes ``OUT/cost.json``. The report then puts each pretraining at its steps x
this step time: the runs' own speeds (``runner.speed``) depend on what else the
cores did during hours of runs, which a grid run on a shared machine cannot
control. The step is timed on random images (no input pipeline: the report's
cost is the model's).
"""
from __future__ import annotations

import json
import os

from ebm_pretrain import fs
from ebm_pretrain.study.grid import has_pretraining


def pretrained_methods(grid) -> list[str]:
  """The grid's methods that have a pretraining (not scratch, not the pixels)."""
  return [m for m, task in grid.methods.items() if has_pretraining(task)]


def measure(grid, out: str, rounds: int = 10, grid_spec: str = "") -> dict:
  """Times one training step of every pretraining method of ``grid`` (a grid
  config; ``grid_spec``: where it came from, recorded) over ``rounds``
  interleaved rounds and writes ``OUT/cost.json``."""
  import platform

  import jax

  from ebm_pretrain import benchmark, objectives
  from ebm_pretrain.study.runner import Runner
  runner = Runner(grid, out)
  load_before = os.getloadavg()
  calls, methods = {}, {}
  for m in pretrained_methods(grid):
    config = runner.pretrain_config(m, 0)
    one, compile_s, flops, _ = benchmark.compiled_train_step(
        objectives.get(config), lambda step, lr=config.optim.base_lr: lr)
    jax.block_until_ready(one())  # warm-up
    calls[m] = one
    methods[m] = dict(batch_size=config.batch_size, compile_s=compile_s, flops=flops,
                      objective=config.objective)
  for m, step_s in benchmark.time_interleaved(calls, rounds).items():
    methods[m]["step_s"] = step_s
  record = dict(grid=grid_spec, rounds=rounds, methods=methods,
                machine=dict(device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
                             processor=platform.processor(), jax=jax.__version__,
                             load_avg_1min_before=load_before[0],
                             load_avg_1min_after=os.getloadavg()[0]))
  os.makedirs(out, exist_ok=True)
  fs.write_text(os.path.join(out, "cost.json"),
                json.dumps(record, indent=1, sort_keys=True, default=float))
  return record


def load(out: str) -> dict:
  """``OUT/cost.json``'s methods ({} without one)."""
  path = os.path.join(out, "cost.json")
  return json.load(open(path))["methods"] if os.path.exists(path) else {}


# What a pretraining's length changes: not its step.
LENGTH_KEYS = {"total_epochs", "total_steps", "seed"}


def with_same_steps(cost: dict, pretrainings: list[dict]) -> dict:
  """``cost`` and, for a method it lacks whose pretraining differs from a
  measured method's only in its length (``mae_ep15`` and ``mae``: the same
  program), that method's step time, marked ``same_step_as``. Keys only one
  config has (declared after the older cell was made) are not compared."""
  from ebm_pretrain.workdir import dotted
  flat = {r["cell"]["method"]: dotted(r["config"]) for r in pretrainings}

  def same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys() if k not in LENGTH_KEYS)
  out = dict(cost)
  for m, config in sorted(flat.items()):
    twin = next((t for t in sorted(cost) if t in flat and same(config, flat[t])), None)
    if m not in cost and twin:
      out[m] = dict(cost[twin], same_step_as=twin)
  return out
