"""Benchmark: ``python -m ebm_pretrain.benchmark --config=configs/vit_s.py [--config.key=value]``.

In one process, after compiling, times (median over ``--steps`` rounds that
call each step once, with ``block_until_ready``) the full energy training step,
a plain supervised step (forward, backward, AdamW) and a forward pass of the
same backbone and batch on one device, and reports img/s, step and compile
time, XLA's memory analysis and peak RSS, XLA's FLOPs and the FLOP/s achieved, against the FLOP/s of a large
matmul (the roofline) measured in the same run, plus the input pipeline's own
img/s. Prints a table and writes JSON (``--output``). Each ``--variant`` (config
overrides) adds an energy step timed in the same run, with its time and memory
relative to the default's: how docs/performance.md's "what each choice bought" is measured;
a variant may change the image size or the batch (its own random batch), so
``--variant=inner_steps=1 --variant=inner_steps=4`` and ``data.image_size=112``
sweep the cost. ``--reference=torch`` adds the same two training steps written
the straightforward PyTorch way (``ebm_pretrain/torch_reference.py``, the
paper's Listing 1), timed in the same rounds, and reports our speed over its.
"""
from __future__ import annotations

import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags, logging
from ml_collections import config_flags

from ebm_pretrain import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=False)
_OUTPUT = flags.DEFINE_string("output", "benchmark.json", "Where to write the JSON report.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (median).")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n roofline matmul.")
_PIPELINE_CONFIG = config_flags.DEFINE_config_file(
    "pipeline_config", None, "Config whose data the input pipeline is timed on "
    "(default: --config's).", lock_config=False)
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 20, "Batches timed in the pipeline.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "Config overrides 'KEY=VALUE[,KEY=VALUE]' (e.g. 'stepwise_grads=False'): "
    "an extra energy step timed in the same run and compared with the default one.")
_REFERENCE = flags.DEFINE_enum(
    "reference", "none", ["none", "torch"], "Also time the PyTorch reference steps "
    "(ebm_pretrain/torch_reference.py) in the same rounds; needs torch installed.")
flags.mark_flags_as_required(["config"])

FIELDS = ("step_s", "img_per_s", "compile_s", "flops", "flops_per_s", "roofline_fraction",
          "xla_memory_mib", "rss_peak_mib")


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds(fn: Callable[[], Any]) -> float:
  """Wall time of one call, waiting for its results."""
  import jax
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def time_interleaved(fns: dict[str, Callable[[], Any]], steps: int) -> dict[str, float]:
  """Median seconds of each function over ``steps`` rounds, one call of each per
  round: a drift in the machine's speed (other jobs, clocks) then hits every
  measurement alike, so their ratios hold even when absolute times move."""
  times = {name: [] for name in fns}
  for _ in range(steps):
    for name, fn in fns.items():
      times[name].append(_seconds(fn))
  return {name: statistics.median(ts) for name, ts in times.items()}


def _compiled(jitted, *args):
  t = time.perf_counter()
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  flops = program_flops(jitted, *args)
  mem = compiled.memory_analysis()
  mem_bytes = None
  if mem is not None:
    mem_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes)
  return compiled, compile_s, flops, mem_bytes


def program_flops(jitted, *args) -> float | None:
  """XLA's FLOP count of the program as written (HLO before backend passes),
  lowered for the CPU from the arguments' shapes: the same count whatever
  device runs it. (XLA:GPU's own count of the compiled program leaves out the
  cuBLAS calls that do the matmuls, an order of magnitude too low, and the GPU
  lowering has no count at all.)"""
  import jax
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  cost = jitted.trace(*shapes).lower(lowering_platforms=("cpu",)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # On a GPU host (jax 0.11.2) this count came back empty: then None, not 0.
  return float(cost["flops"]) if cost and cost.get("flops") else None


def roofline(n: int, dtype, reps: int = 10) -> float:
  """FLOP/s of an n x n @ n x n matmul on the default device: the fastest of
  ``reps`` (a peak; a median would count the machine's hiccups against it)."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  _seconds(lambda: f(a, b))  # compile
  return 2 * n ** 3 / min(_seconds(lambda: f(a, b)) for _ in range(reps))


class TorchReference:
  """The PyTorch reference's steps in a worker process (``ebm_pretrain/torch_reference.py``:
  why a separate process is said there): ``steps`` maps each step's name to a
  call that runs it once in the worker and waits for it."""

  def __init__(self, config):
    check_torch_reference(config)
    spec = {"model": {"name": config.model.name, "variant": config.model.variant,
                      "pool": config.model.get("pool", "tok")},
            "data": {k: config.data[k] for k in ("image_size", "channels", "mean", "std")},
            "optim": {k: config.optim.get(k) for k in ("base_lr", "b2", "weight_decay")},
            "alpha": {"init": config.alpha.init},
            **{k: config[k] for k in ("batch_size", "dtype", "inner_steps", "loss")}}
    self.proc = subprocess.Popen([sys.executable, "-m", "ebm_pretrain.torch_reference"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = self._ask(json.dumps(spec))
    self.first_call_s, self.info = ready["ready"], {k: ready[k] for k in ("torch", "threads")}
    self.steps = {name: (lambda name=name: self._ask(name)["loss"]) for name in self.first_call_s}

  def _ask(self, line: str) -> dict:
    self.proc.stdin.write(line + "\n")
    self.proc.stdin.flush()
    answer = self.proc.stdout.readline()
    if not answer:
      raise RuntimeError(f"the PyTorch reference worker exited (code {self.proc.wait()}); "
                         "its error is above")
    return json.loads(answer)

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def check_torch_reference(config) -> None:
  """ConfigError naming what the PyTorch reference cannot take."""
  from ebm_pretrain.errors import ConfigError, fail
  if importlib.util.find_spec("torch") is None:
    raise ConfigError("--reference=torch needs PyTorch: pip install -e '.[reference]'")
  if config.model.name != "vit":
    fail("model.name", f"the PyTorch reference is a ViT; got {config.model.name!r}")
  if config.dtype not in ("float32", "bfloat16"):
    fail("dtype", f"the PyTorch reference runs float32 or bfloat16; got {config.dtype!r}")
  if config.objective != "energy":
    fail("objective", f"the PyTorch reference is the energy objective; got {config.objective!r}")


def _random_batch(config):
  import jax.numpy as jnp
  import numpy as np
  d, b = config.data, config.batch_size
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.integers(0, 256, (b, d.image_size, d.image_size, d.channels),
                                            dtype=np.uint8)),
          "label": jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32),
          "valid": jnp.ones((b,), bool)}


def compiled_train_step(objective, schedule) -> tuple[Callable[[], Any], float, float | None,
                                                        float | None]:
  """(one, compile_s, flops, xla_memory_bytes): ``one()`` runs one training step
  of ``objective`` (its config's batch, random images) from a fresh state that it
  carries from call to call, as the trainer does."""
  import jax
  import jax.numpy as jnp
  from ebm_pretrain import optim, train
  c = objective.config
  batch = _random_batch(c)
  dummy = jnp.zeros((1, c.data.image_size, c.data.image_size, c.data.channels), jnp.float32)
  params = objective.init(jax.random.PRNGKey(0), dummy)
  tx = optim.make_optimizer(c, params, objective, schedule)
  state = {"params": params,
           "model_state": objective.init_model_state(jax.random.PRNGKey(0), dummy),
           "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
           "rng": jax.random.PRNGKey(1)}
  step_fn = jax.jit(train.make_train_step(objective, tx, schedule, c.data.mean, c.data.std),
                    donate_argnums=(0,))
  compiled, compile_s, flops, mem = _compiled(step_fn, state, batch)
  holder = {"state": state}

  def one():
    holder["state"], m = compiled(holder["state"], batch)
    return m["loss"]
  return one, compile_s, flops, mem


def measure_steps(config, steps: int, matmul_size: int, variants: dict | None = None,
                  reference: str = "none") -> dict[str, dict[str, float]]:
  """Times the three steps; ``variants`` ({name: config}) add energy steps,
  ``reference="torch"`` the PyTorch reference's energy and supervised steps
  (``torch_energy_step``, ``torch_supervised_step``)."""
  import jax
  import jax.numpy as jnp
  from ebm_pretrain import objectives, recipes
  from ebm_pretrain.data import normalization

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.dtype, jnp.float32)
  peak = roofline(matmul_size, dtype)  # before and after the steps: the better of the two

  d = config.data
  batch = _random_batch(config)
  dummy = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  schedule = lambda step: config.optim.base_lr
  results, calls, batch_sizes = {}, {}, {}

  def prepare(name: str, fn: Callable[[], Any], compile_s: float, flops: float | None, mem,
              batch_size: int = config.batch_size) -> None:
    """Records the compiled step's figures and runs it once (warm-up; the RSS
    peak then includes its first run), to be timed later with the others."""
    jax.block_until_ready(fn())
    results[name] = dict(compile_s=compile_s, flops=flops,
                         xla_memory_mib=mem / 2 ** 20 if mem is not None else None,
                         rss_peak_mib=_rss_mib())
    calls[name], batch_sizes[name] = fn, batch_size

  def prepare_objective(name: str, objective) -> None:
    prepare(name, *compiled_train_step(objective, schedule), objective.config.batch_size)

  # In order of growing memory, so that each RSS peak is mostly the step's own.
  # Forward: the energy model's forward pass (backbone + linear head).
  energy_obj = objectives.get(config)
  params = energy_obj.init(jax.random.PRNGKey(0), dummy)
  fwd = jax.jit(lambda p, x: energy_obj.model.apply(
      {"params": p["model"]}, normalization.normalize(x, d.mean, d.std)))
  compiled, compile_s, flops, mem = _compiled(fwd, params, batch["image"])
  prepare("forward", lambda: compiled(params, batch["image"]), compile_s, flops, mem)
  # The reference: the same backbone, data and optimizer, a 1000-class head, plain
  # cross-entropy (no layer decay, label smoothing or mixing).
  sup = recipes.finetune_defaults()
  for key in ("model", "data", "dtype", "param_dtype", "batch_size", "optim", "seed"):
    sup[key] = config[key]
  sup.layer_decay, sup.label_smoothing = 1.0, 0.0
  sup.mixup.mixup_alpha = sup.mixup.cutmix_alpha = 0.0
  prepare_objective("supervised_step", objectives.get(sup))
  prepare_objective("energy_step", energy_obj)
  for spec, variant in (variants or {}).items():
    prepare_objective(f"energy_step[{spec}]", objectives.get(variant))
  torch_ref = TorchReference(config) if reference == "torch" else None
  if torch_ref:
    for name, fn in torch_ref.steps.items():
      # PyTorch has no compile step: "compile" is its first call. Its FLOPs are
      # taken as XLA's count of the same step; no XLA memory, and the RSS is ours.
      prepare(f"torch_{name}", fn, torch_ref.first_call_s[name], results[name]["flops"], None)
      results[f"torch_{name}"].update(torch_ref.info, rss_peak_mib=None)

  for name, step_s in time_interleaved(calls, steps).items():
    results[name]["step_s"] = step_s
  if torch_ref:
    torch_ref.close()
  for spec in variants or {}:
    for field in ("step_s", "xla_memory_mib"):
      base, this = results["energy_step"][field], results[f"energy_step[{spec}]"][field]
      results[f"energy_step[{spec}]"][f"{field}_over_default"] = this / base if base else None

  peak = max(peak, roofline(matmul_size, dtype))
  for name, r in results.items():
    r["img_per_s"] = batch_sizes[name] / r["step_s"]
    r["flops_per_s"] = r["flops"] / r["step_s"] if r["flops"] else None
    r["roofline_fraction"] = r["flops_per_s"] / peak if r["flops"] else None
  results["roofline"] = {"matmul_size": matmul_size, "dtype": config.dtype, "flops_per_s": peak}
  return results


def measure_pipeline(config, batches: int) -> dict[str, Any]:
  from ebm_pretrain.data import pipeline, sources
  d = config.data
  try:
    source = sources.get_source(d, d.split)
  except sources.DataSourceError as e:
    return {"img_per_s": None, "error": str(e).splitlines()[0]}
  ds = pipeline.make_train_dataset(source, global_batch=config.batch_size,
                                   num_batches=batches + 2, image_size=d.image_size,
                                   channels=d.channels, seed=0, num_workers=d.num_workers)
  it = iter(ds)
  next(it), next(it)  # start-up (worker processes, file handles)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  return {"img_per_s": batches * config.batch_size / dt, "source": d.source,
          "num_workers": d.num_workers, "batch_size": config.batch_size}


def report(config, results: dict, pipe: dict) -> dict:
  import jax
  e, s = results["energy_step"], results["supervised_step"]
  summary = {
      "energy_over_supervised_time": e["step_s"] / s["step_s"],
      "energy_roofline_fraction": e["roofline_fraction"],
      "energy_peak_memory_gib": max(e["xla_memory_mib"] or 0, 0) / 1024,
      "rss_peak_gib": e["rss_peak_mib"] / 1024,
      "pipeline_over_energy_speed": (pipe["img_per_s"] / e["img_per_s"]
                                     if pipe.get("img_per_s") else None),
  }
  if "torch_energy_step" in results:  # speed ratios: > 1 means ours is faster
    te, ts = results["torch_energy_step"], results["torch_supervised_step"]
    summary.update({
        "energy_speed_over_torch": te["step_s"] / e["step_s"],
        "supervised_speed_over_torch": ts["step_s"] / s["step_s"],
        "torch_energy_over_supervised_time": te["step_s"] / ts["step_s"],
    })
  if e["flops"] and s["flops"]:
    summary["energy_over_supervised_flops"] = e["flops"] / s["flops"]
  return {
      "config": {"model": f"{config.model.name} {config.model.variant}",
                 "image_size": config.data.image_size, "batch_size": config.batch_size,
                 "inner_steps": config.inner_steps, "unroll": config.unroll,
                 "remat": config.model.get("remat", "none"), "dtype": config.dtype},
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "jax": jax.__version__,
      "results": results, "pipeline": pipe, "summary": summary,
  }


def print_table(rep: dict) -> None:
  rows = [("", "step s", "img/s", "compile s", "GFLOP", "GFLOP/s", "% roof", "XLA MiB", "RSS MiB",
           "time, memory vs default")]
  ratio = lambda r, f: f"{r[f]:.2f}x" if r.get(f) is not None else "?"
  for name, r in rep["results"].items():
    if name == "roofline":
      continue
    rows.append((name, f"{r['step_s']:.3f}", f"{r['img_per_s']:.1f}", f"{r['compile_s']:.1f}",
                 *((f"{r['flops'] / 1e9:.1f}", f"{r['flops_per_s'] / 1e9:.1f}",
                    f"{100 * r['roofline_fraction']:.0f}") if r["flops"] else ("?",) * 3),
                 f"{r['xla_memory_mib']:.0f}" if r["xla_memory_mib"] is not None else "?",
                 f"{r['rss_peak_mib']:.0f}" if r["rss_peak_mib"] is not None else "?",
                 f"{ratio(r, 'step_s_over_default')}, {ratio(r, 'xla_memory_mib_over_default')}"
                 if "step_s_over_default" in r else ""))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
  roof = rep["results"]["roofline"]
  print(f"roofline: {roof['matmul_size']}^3 {roof['dtype']} matmul {roof['flops_per_s'] / 1e9:.1f} GFLOP/s")
  p = rep["pipeline"]
  print(f"pipeline: {p['img_per_s']:.1f} img/s" if p.get("img_per_s") else f"pipeline: {p.get('error')}")
  print("summary: " + ", ".join(f"{k} {v:.3g}" for k, v in rep["summary"].items() if v is not None))


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from ebm_pretrain import fs, recipes, validate
  from ebm_pretrain.errors import ConfigError
  config = _CONFIG.value
  try:  # every config is checked before anything is timed
    validate.validate(config, num_devices=1)
    variants = {spec: recipes.override(config, spec) for spec in _VARIANTS.value}
    for variant in variants.values():
      validate.validate(variant, num_devices=1)
    if _REFERENCE.value == "torch":
      check_torch_reference(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  results = measure_steps(config, _STEPS.value, _MATMUL.value, variants, _REFERENCE.value)
  pipe = measure_pipeline(_PIPELINE_CONFIG.value or config, _PIPELINE_BATCHES.value)
  rep = report(config, results, pipe)
  print_table(rep)
  fs.path(_OUTPUT.value).write_text(json.dumps(rep, indent=2))
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
