"""The trainer: one loop for every objective (big_vision's train.py layout).

Sections: setup, mesh, input, model, optimizer, state & checkpoint, update step,
evaluation, loop. The train state is an explicit pytree
``{"params", "opt", "step", "rng"}``, replicated over a 1-D ``data`` mesh of all
devices (all processes); batches are sharded along it. Per-step randomness is
``fold_in(rng, step)``, so a resumed run draws exactly what an uninterrupted one
would. Metrics stay on device until a log step.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ebm_pretrain import checkpoints, config_lib, fs, metrics as metrics_lib, objectives
from ebm_pretrain import workdir as workdir_lib
from ebm_pretrain.data import pipeline, sources


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------
# Optimizer.
# ----------------------------------------------------------------------------
def decay_mask(params) -> Any:
  """Weight decay on Dense/Conv kernels only: never on norms, biases, position
  embeddings, the cls token or alpha (MAE / paper Table A)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: objectives.path_str(p).endswith("kernel"), params)


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


def make_optimizer(config, params, objective, schedule):
  o = config.optim
  if o.get("name", "adamw") == "lars":  # MAE's linear probing
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
      lambda p, _: "frozen" if objective.frozen(objectives.path_str(p)) else "train", params)
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------
def normalize(images, mean, std):
  """uint8 [B, H, W, C] -> float32 normalised (on device)."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def total_steps_of(config, num_examples: int) -> tuple[int, float]:
  steps_per_epoch = num_examples / config.batch_size
  if config.total_steps > 0:
    return int(config.total_steps), steps_per_epoch
  return int(math.ceil(config.total_epochs * steps_per_epoch)), steps_per_epoch


# ----------------------------------------------------------------------------
# The update.
# ----------------------------------------------------------------------------
def value_and_grad_of(objective):
  """The objective's own gradient computation if it has one, else autodiff of its loss."""
  return getattr(objective, "value_and_grad", None) or jax.value_and_grad(
      objective.loss, has_aux=True)


def accumulate_gradients(grad_fn, params, model_state, batch, rng, steps: int):
  """Mean loss, metrics and gradients over ``steps`` equal micro-batches, run one
  after the other (``lax.scan``): the recipe's batch on fewer or smaller devices.
  Micro-batch j holds examples j, j + steps, ..., so that every device keeps an
  equal share of each micro-batch and nothing moves between devices. ``grad_fn``
  is :func:`value_and_grad_of` an objective."""
  if steps == 1:
    (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, rng)
    return loss, metrics, model_state, grads
  micro = jax.tree.map(
      lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)

  def body(carry, xs):
    acc, ms = carry
    i, mb = xs
    (loss, (metrics, ms)), grads = grad_fn(params, ms, mb, jax.random.fold_in(rng, i))
    return (jax.tree.map(jnp.add, acc, grads), ms), (loss, metrics)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, model_state), (losses, metrics) = jax.lax.scan(
      body, (zeros, model_state), (jnp.arange(steps), micro))
  grads = jax.tree.map(lambda g: g / steps, grads)
  return jnp.mean(losses), jax.tree.map(jnp.mean, metrics), model_state, grads


STATE_FINITE = "state_finite"  # a train step's flag: its new params and optimizer state are finite


def make_train_step(objective, tx, schedule, mean, std, accum_steps: int = 1):
  """``(state, batch) -> (state, metrics)``: one optimizer step on a uint8 batch;
  ``metrics[STATE_FINITE]`` says whether the new state is finite."""
  grad_fn = value_and_grad_of(objective)

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    batch = dict(batch, image=normalize(batch["image"], mean, std))
    loss, aux, model_state, grads = accumulate_gradients(
        grad_fn, state["params"], state["model_state"], batch, rng, accum_steps)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "lr": schedule(state["step"]),
           "skipped_images": jnp.sum(~batch["valid"]).astype(jnp.float32), **aux,
           # Read before a checkpoint is saved (never a NaN state): one reduction
           # here costs less than a separately compiled check.
           STATE_FINITE: checkpoints.all_finite({"params": params, "opt": opt})}
    new_state = {"params": params, "model_state": model_state, "opt": opt,
                 "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, out
  return train_step


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
class RunStopped(RuntimeError):
  """SIGTERM or SIGINT stopped the run after it saved a checkpoint; rerunning the
  same command resumes it. ``main`` exits with ``EXIT_STOPPED``."""

  def __init__(self, signame: str, step: int):
    super().__init__(f"{signame}: checkpoint saved at step {step}; rerun the same command "
                     "to resume")
    self.signame, self.step = signame, step


EXIT_STOPPED = 75  # sysexits EX_TEMPFAIL: stopped cleanly, checkpoint saved, rerun to resume


def _stop_signals(nproc: int, stop: dict):
  """Installs the handlers that ask the loop to save and stop; returns a function
  that restores the previous ones. One process handles SIGTERM and SIGINT
  itself. With several, all must stop at the same step: JAX's coordination
  service (which jax.distributed hooks to SIGTERM) agrees on it through Orbax,
  and SIGINT keeps its default."""
  names = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
  if nproc > 1:
    return lambda: None

  def handler(signum, frame):
    if stop["signal"] == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    stop["signal"] = names[signum]
  previous = {s: signal.signal(s, handler) for s in names}
  return lambda: [signal.signal(s, h) for s, h in previous.items()]


def _prepare_workdir(workdir: str, primary: bool) -> None:
  """The workdir exists and can be written, or a WorkdirError says why not."""
  try:
    fs.check_backend(workdir)
    root = fs.path(workdir)
    if primary:
      root.mkdir(parents=True, exist_ok=True)
      probe = root / f".write_test.{os.getpid()}"
      probe.write_text("")
      probe.unlink()
  except OSError as e:
    raise workdir_lib.WorkdirError(f"cannot write to workdir {workdir}: "
                                   f"{e.strerror or e}") from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None) -> tuple[dict, dict[str, float]]:
  """Trains until ``total_steps`` (resuming from ``workdir`` if possible);
  returns the final train state and the last logged metrics. ``devices``
  defaults to every device of every process. Raises RunStopped after saving
  when SIGTERM/SIGINT asked the run to stop."""
  # == Setup ===================================================================
  devices = list(devices or jax.devices())
  nproc, pidx = jax.process_count(), jax.process_index()
  primary = pidx == 0
  log = print if primary else (lambda *_, **__: None)
  config = config_lib.resolve_model(config)  # fine-tuning configs may take init's backbone
  config_lib.validate(config, len(devices), nproc)
  source = sources.get_train_source(config.data)  # bad data: an error before the workdir is touched
  _prepare_workdir(workdir, primary)
  with contextlib.ExitStack() as hold:  # released whatever happens below
    if primary:  # one run per workdir
      hold.enter_context(workdir_lib.WorkdirLock(
          workdir, stale_after_s=config.get("lock_stale_seconds", 300), log=log))
    ckpts = hold.enter_context(contextlib.closing(checkpoints.TrainCheckpoints(
        workdir, keep=config.keep_checkpoints, best_metric=config.get("best_metric", ""),
        best_mode=config.get("best_mode", "max"), log=log)))
    # A resumed run must train with the config its checkpoints were made with.
    workdir_lib.write_config(workdir, config, resuming_at=ckpts.manager.latest_step(),
                             write=primary, log=log)
    return _run(config, workdir, devices, source, ckpts, log)


def _run(config, workdir, devices, source, ckpts, log):
  """The rest of :func:`train_and_evaluate`, with the workdir held."""
  nproc, pidx = jax.process_count(), jax.process_index()
  primary = pidx == 0
  # == Mesh ====================================================================
  mesh = Mesh(np.asarray(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  # == Input ===================================================================
  d = config.data
  total_steps, steps_per_epoch = total_steps_of(config, len(source))
  train_ds = pipeline.make_train_dataset(
      source, global_batch=config.batch_size, num_batches=total_steps,
      image_size=d.image_size, channels=d.channels, seed=config.seed, process_index=pidx,
      process_count=nproc, num_workers=d.num_workers, augment=augment_of(config))
  train_iter = iter(train_ds)
  mean, std = tuple(d.mean), tuple(d.std)

  def to_global(local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in local.items()}

  # == Model ===================================================================
  objective = objectives.get_objective(config)
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, vis_rng = jax.random.split(base_rng, 3)
  dummy = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)

  # == Optimizer ===============================================================
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  param_shapes = jax.eval_shape(objective.init, init_rng, dummy)
  tx = make_optimizer(config, param_shapes, objective, schedule)

  def init_state(params):
    return {"params": params, "model_state": objective.init_model_state(init_rng, dummy),
            "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": train_rng}

  state_shapes = jax.eval_shape(init_state, param_shapes)
  state_sharding = jax.tree.map(lambda _: replicated, state_shapes)

  # == Restore or initialise ===================================================
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_shapes, state_sharding)
  restored = ckpts.restore(abstract, train_iter)
  if restored is not None:
    start, state = restored
    logging.info("resumed from %s at step %d", ckpts.dir, start)
    log(f"Resuming from checkpoint step {start} in {ckpts.dir}", flush=True)
  else:
    start = 0
    params = jax.jit(objective.init)(init_rng, dummy)
    if config.get("init"):  # fine-tuning: the pretrained backbone, a fresh head
      params = objective.init_from(jax.device_get(params), config.init, log=log)
    params = _replicate(params, replicated)
    state = jax.jit(init_state, out_shardings=state_sharding)(params)
  start = int(start)

  # == Update step =============================================================
  train_step = make_train_step(objective, tx, schedule, mean, std,
                               config.get("grad_accum_steps", 1))
  train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  @functools.partial(jax.jit, out_shardings=replicated)
  def visualize(params, batch, rng):
    k = config.image_count
    small = {key: v[:k] for key, v in batch.items()}
    small["image"] = normalize(small["image"], mean, std)
    return objective.visualize(params, small, rng)

  # == Evaluation ==============================================================
  eval_fn = make_evaluator(config, objective, to_global, pidx, nproc) \
      if config.get("eval_examples", 0) else None
  eval_every = config.get("eval_every", 0)

  def evaluate(step: int) -> dict[str, float]:
    ev = eval_fn(state["params"], state["model_state"])
    writer.scalars(step, ev)
    log(f"Eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()),
        flush=True)
    ckpts.save_best(step, state, ev, finite=finite)
    return ev

  # == Loop ====================================================================
  writer = metrics_lib.MetricWriter(workdir, enabled=primary)
  console = metrics_lib.ConsoleReporter(total_steps, start, enabled=primary)
  stall = metrics_lib.StallDetector(config.get("stall_log_steps", 5))
  stop = {"signal": None}
  restore_signals = _stop_signals(nproc, stop)

  def save(step: int, unchecked: list[dict]):
    _check_finite(unchecked, step, ckpts)
    ckpts.save(step, state, train_iter, finite=finite)  # never a non-finite state
    writer.flush()  # the metrics of a saved step reach the workdir with it

  pending: list[dict] = []
  last: dict[str, float] = {}
  t_log, step = time.time(), start
  try:
    for step in range(start + 1, total_steps + 1):
      batch = to_global(next(train_iter))
      state, m = train_step(state, batch)
      finite = m.pop(STATE_FINITE)
      pending.append(m)
      console.update(step)

      if step % config.log_every == 0 or step == total_steps:
        host = _check_finite(pending, step, ckpts)
        last = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
        last["skipped_images"] = float(np.sum([h["skipped_images"] for h in host]))
        dt = time.time() - t_log
        img_s = len(pending) * config.batch_size / max(dt, 1e-9)
        epoch = step / steps_per_epoch
        warning = stall.update(last)
        if warning:
          last["stalled"] = 1.0
        writer.scalars(step, {**last, "epoch": epoch, "img_per_s": img_s})
        console.line(step, epoch, _console_fields(last), img_s)
        if warning:
          console.warn(f"step {step}: {warning}")
        pending, t_log = [], time.time()

      if hasattr(objective, "visualize") and (step % config.image_every == 0
                                              or step == total_steps):
        grids = jax.device_get(visualize(state["params"], batch, jax.random.fold_in(vis_rng, step)))
        path = writer.image(step, "restoration", metrics_lib.image_grid(grids, mean, std))
        if path and step == total_steps:
          log(f"Restoration grid (corrupted | steps | original): {path}", flush=True)

      if eval_fn is not None and eval_every and step % eval_every == 0 and step != total_steps:
        last.update(evaluate(step))

      if nproc > 1 and ckpts.reached_preemption(step):
        stop["signal"] = "SIGTERM"
      if step % config.checkpoint_every == 0 or step == total_steps or stop["signal"]:
        save(step, pending)
      if stop["signal"]:
        ckpts.wait()
        log(f"Stopped ({stop['signal']}): checkpoint saved at step {step}; rerun the same "
            f"command to resume (exit status {EXIT_STOPPED}).", flush=True)
        raise RunStopped(stop["signal"], step)
    ckpts.wait()
    if eval_fn is not None and total_steps > start:
      last.update(evaluate(total_steps))
      if ckpts.best is not None:
        ckpts.wait()
        log(f"Best {ckpts.best_metric}: step {ckpts.best_step()} in {fs.name(workdir)}/best",
            flush=True)
  finally:
    restore_signals()
    ckpts.wait()
    writer.close()
    console.close()
  log(f"Done: step {step}. Checkpoints: {ckpts.dir}  Metrics: "
      f"{fs.path(workdir) / 'metrics.jsonl'}  TensorBoard: "
      f"{fs.path(workdir) / 'tensorboard'}", flush=True)
  return state, last


def _check_finite(pending: list[dict], step: int, ckpts) -> list[dict]:
  host = jax.device_get(pending)
  for i, h in enumerate(host):
    if not np.isfinite(h["loss"]):
      bad = step - len(host) + i + 1
      raise NonFiniteLossError(
          f"loss is {h['loss']} at step {bad}: stopping. {ckpts.divergence_advice()}")
  return host


def _console_fields(values: dict[str, float]) -> dict[str, float]:
  keys = ["loss"] + sorted(k for k in values if k.startswith("step_error")) + [
      "corrupted_error", "alpha", "accuracy", "grad_norm", "lr"]
  out = {k: values[k] for k in keys if k in values}
  if values.get("skipped_images"):
    out["skipped_images"] = values["skipped_images"]
  return out


# ----------------------------------------------------------------------------
# Held-out evaluation.
# ----------------------------------------------------------------------------
def make_evaluator(config, objective, to_global, pidx, nproc):
  """``(params, model_state) -> metrics`` over the first ``eval_examples`` images
  (all of them if < 0) of ``data.eval_split``: the short side resized to
  ``data.eval_resize`` (default: image_size), then the central crop."""
  d = config.data
  source = sources.get_source(d, d.eval_split)
  n = config.eval_examples if config.eval_examples > 0 else None
  ds = pipeline.make_eval_dataset(
      source, batch_size=config.eval_batch_size // nproc, image_size=d.image_size,
      channels=d.channels, resize_to=d.get("eval_resize") or d.image_size, process_index=pidx,
      process_count=nproc, num_examples=n, num_workers=d.num_workers)

  @jax.jit
  def sums(params, model_state, batch, rng):
    batch = dict(batch, image=normalize(batch["image"], d.mean, d.std))
    return objective.eval_sums(params, model_state, batch, rng)

  def evaluate(params, model_state) -> dict[str, float]:
    totals = None  # summed on device: one host transfer per evaluation
    rng = jax.random.PRNGKey(config.seed + 1)
    for i, local in enumerate(ds):
      s = sums(params, model_state, to_global(local), jax.random.fold_in(rng, i))
      totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
    return objective.eval_summary({k: float(v) for k, v in jax.device_get(totals).items()})
  return evaluate


def augment_of(config) -> pipeline.Augment:
  a = config.get("augment", None)
  if a is None:
    return pipeline.Augment()
  randaug = (a.randaug_ops, a.randaug_magnitude, a.randaug_std) if a.randaug_ops else None
  return pipeline.Augment(crop_scale=tuple(a.crop_scale), flip=a.flip, randaug=randaug)


def _replicate(tree, sharding):
  """Host arrays, identical on every process -> global arrays replicated on the mesh."""
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)
