"""The trainer: one loop for every objective (big_vision's train.py layout).

Sections: setup, mesh, input, model and optimizer, restore or initialise, update
step, evaluation, loop; what an objective computes is in ``objectives/``, the
optimizer in ``optim``, checkpointing in ``train_checkpoints.TrainCheckpoints``,
evaluation in ``evaluators/``. The train state is an explicit pytree
``{"params", "model_state", "opt", "step", "rng"}``, replicated over a 1-D ``data`` mesh of all
devices (all processes); batches are sharded along it. Per-step randomness is
``fold_in(rng, step)``, so a resumed run draws exactly what an uninterrupted one
would. Metrics stay on device until a log step.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ebm_pretrain import checkpoints, disk_full, evaluators, fs, metrics as metrics_lib, objectives
from ebm_pretrain import optim, pictures, train_checkpoints, transfer, trees
from ebm_pretrain import validate as validate_lib, workdir as workdir_lib
from ebm_pretrain.data import normalization, pipeline, sources
from ebm_pretrain.errors import NoSpaceError, NonFiniteLossError
from ebm_pretrain.steps import itstime, total_steps_of


# ----------------------------------------------------------------------------
# The update.
# ----------------------------------------------------------------------------
def accumulate_gradients(grad_fn, params, model_state, batch, rng, steps: int):
  """Mean loss, metrics and gradients over ``steps`` equal micro-batches, run one
  after the other (``lax.scan``): the recipe's batch on fewer or smaller devices.
  Micro-batch j holds examples j, j + steps, ..., so that every device keeps an
  equal share of each micro-batch and nothing moves between devices. ``grad_fn``
  is an objective's ``value_and_grad``."""
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


def make_train_step(objective, tx, schedule, mean, std, accum_steps: int = 1,
                    ema_decay: float = 0.0):
  """``(state, batch) -> (state, metrics)``: one optimizer step on a uint8 batch;
  ``metrics[STATE_FINITE]`` says whether the new state is finite. With
  ``ema_decay`` the state's ``ema`` (the parameters' moving average) follows."""
  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    batch = dict(batch, image=normalization.normalize(batch["image"], mean, std))
    loss, aux, model_state, grads = accumulate_gradients(
        objective.value_and_grad, state["params"], state["model_state"], batch, rng, accum_steps)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "lr": schedule(state["step"]),
           "skipped_images": jnp.sum(~batch["valid"]).astype(jnp.float32), **aux,
           # Read before a checkpoint is saved (never a NaN state): one reduction
           # here costs less than a separately compiled check.
           STATE_FINITE: trees.all_finite({"params": params, "opt": opt})}
    new_state = {"params": params, "model_state": model_state, "opt": opt,
                 "step": state["step"] + 1, "rng": state["rng"]}
    if ema_decay:
      new_state["ema"] = optax.incremental_update(params, state["ema"], 1.0 - ema_decay)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None) -> tuple[dict, dict[str, float]]:
  """Trains until ``total_steps`` (resuming from ``workdir`` if possible);
  returns the final train state and the last logged metrics. ``devices``
  defaults to every device of every process. Raises RunStopped after saving
  when SIGTERM/SIGINT asked the run to stop."""
  # == Setup ===================================================================
  devices = list(devices or jax.devices())
  primary = jax.process_index() == 0
  log = print if primary else (lambda *_, **__: None)
  config = transfer.resolve_model(config)  # fine-tuning configs may take init's backbone
  validate_lib.validate(config, len(devices), jax.process_count())
  source = sources.get_train_source(config.data)  # bad data: an error before the workdir is touched
  workdir_lib.prepare(workdir, primary)
  with contextlib.ExitStack() as hold:  # released whatever happens below
    if primary:  # one run per workdir
      hold.enter_context(workdir_lib.WorkdirLock(
          workdir, stale_after_s=config.lock_stale_seconds, log=log))
    ckpts = hold.enter_context(contextlib.closing(train_checkpoints.TrainCheckpoints(
        workdir, keep=config.keep_checkpoints, best_metric=config.best_metric,
        best_mode=config.best_mode, timeout_s=config.checkpoint_timeout_s, log=log)))
    # A resumed run must train with the config its checkpoints were made with.
    workdir_lib.write_config(workdir, config, resuming_at=ckpts.manager.latest_step(),
                             write=primary, log=log)
    if primary:  # (a plug-in objective: which module registered it)
      module = objectives.plugin_module(config.objective)
      workdir_lib.write_plugin(workdir, config.objective, module)
    return _run(config, workdir, devices, source, ckpts, log)


def _run(config, workdir, devices, source, ckpts, log):
  """The rest of :func:`train_and_evaluate`, with the workdir held."""
  nproc, pidx = jax.process_count(), jax.process_index()
  # == Mesh ====================================================================
  mesh = Mesh(np.asarray(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  ctx = evaluators.Context(mesh)

  # == Input ===================================================================
  d = config.data
  total_steps, steps_per_epoch = total_steps_of(config, len(source))
  train_ds = pipeline.make_train_dataset(
      source, global_batch=config.batch_size, num_batches=total_steps,
      image_size=d.image_size, channels=d.channels, seed=config.seed, process_index=pidx,
      process_count=nproc, num_workers=d.num_workers,
      augment=pipeline.Augment.from_config(config.augment))
  train_iter = iter(train_ds)
  mean, std = tuple(d.mean), tuple(d.std)

  # == Model and optimizer =====================================================
  objective = objectives.get(config)
  init_rng, train_rng, vis_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  dummy = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  schedule = optim.learning_rate_schedule(config, total_steps, steps_per_epoch)
  param_shapes = jax.eval_shape(objective.init, init_rng, dummy)
  tx = optim.make_optimizer(config, param_shapes, objective, schedule)

  def init_state(params):
    state = {"params": params, "model_state": objective.init_model_state(init_rng, dummy),
             "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": train_rng}
    return dict(state, ema=params) if config.ema_decay else state

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
    if config.init:  # fine-tuning: the pretrained backbone, a fresh head
      params = objective.init_from(jax.device_get(params), config.init, log=log)
    params = _replicate(params, replicated)
    state = jax.jit(init_state, out_shardings=state_sharding)(params)
  start = int(start)

  # == Update step =============================================================
  train_step = make_train_step(objective, tx, schedule, mean, std, config.grad_accum_steps,
                               config.ema_decay)
  train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  @functools.partial(jax.jit, out_shardings=replicated)
  def visualize(params, model_state, batch, rng):
    small = {key: v[:config.image_count] for key, v in batch.items()}
    small["image"] = normalization.normalize(small["image"], mean, std)
    return objective.visualize(params, small, rng, model_state=model_state)

  # == Evaluation ==============================================================
  evals = evaluators.build(config, objective, ctx)

  def evaluate(step: int) -> dict[str, float]:
    out = {}
    for ev in evals:
      if itstime(step, ev.every, total_steps):
        out.update(ev(checkpoints.model_params(state), state["model_state"]))
    if out:
      writer.scalars(step, out)
      log(f"Eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()),
          flush=True)
      ckpts.save_best(step, state, out, finite=finite)
    return out

  # == Loop ====================================================================
  writer = metrics_lib.MetricWriter(workdir, enabled=pidx == 0)
  console = metrics_lib.ConsoleReporter(total_steps, start, enabled=pidx == 0)
  stall = metrics_lib.StallDetector(config.stall_log_steps)
  stop = {"signal": None}
  restore_signals = _stop_signals(nproc, stop)
  draws = jax.eval_shape(objective.visualize, param_shapes, {"image": dummy}, vis_rng) is not None

  def save(step: int, unchecked: list[dict]):
    _check_finite(unchecked, step, ckpts)
    ckpts.save(step, state, train_iter, finite=finite)  # never a non-finite state
    writer.flush()  # the metrics of a saved step reach the workdir with it

  pending: list[dict] = []
  last: dict[str, float] = {}
  t_log, step = time.time(), start
  finite = None  # (the last step's flag; None: save_best checks a restored state itself)
  no_space = False
  disk_full.install_filters()
  try:
    for step in range(start + 1, total_steps + 1):
      batch = ctx.to_global(next(train_iter))
      state, m = train_step(state, batch)
      finite = m.pop(STATE_FINITE)
      pending.append(m)
      console.update(step)

      if itstime(step, config.log_every, total_steps):
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
        console.line(step, epoch, _console_fields(objective, last), img_s)
        if warning:
          console.warn(f"step {step}: {warning}")
        pending, t_log = [], time.time()

      if draws and itstime(step, config.image_every, total_steps):
        grids = jax.device_get(visualize(state["params"], state["model_state"], batch,
                                         jax.random.fold_in(vis_rng, step)))
        what = "segmentation" if "prediction" in grids else "restoration"
        path = writer.image(step, what, pictures.grid(grids, mean, std))
        if path and step == total_steps:
          names = " | ".join(map(pictures.label, pictures.column_names(grids)))
          log(f"{what.capitalize()} grid ({names}): {path}", flush=True)

      if step != total_steps:  # the final evaluation runs after the last checkpoint
        last.update(evaluate(step))

      if nproc > 1 and ckpts.reached_preemption(step):
        stop["signal"] = "SIGTERM"
      if itstime(step, config.checkpoint_every, total_steps) or stop["signal"]:
        save(step, pending)
      if stop["signal"]:
        ckpts.wait()
        log(f"Stopped ({stop['signal']}): checkpoint saved at step {step}; rerun the same "
            f"command to resume (exit status {EXIT_STOPPED}).", flush=True)
        raise RunStopped(stop["signal"], step)
    ckpts.wait()
    # Also when nothing was left to train: a stop on the last step saved it before
    # this evaluation, which the rerun still owes (save_best skips a saved step).
    last.update(evaluate(total_steps))
    if total_steps > start:
      if ckpts.best is not None and ckpts.best_step() is not None:
        ckpts.wait()
        log(f"Best {ckpts.best_metric}: step {ckpts.best_step()} in {fs.name(workdir)}/best",
            flush=True)
  except Exception as e:  # pylint: disable=broad-except  (a write that found no space)
    if not disk_full.is_no_space(e):
      raise
    no_space = True
    if isinstance(e, NoSpaceError):
      raise
    ckpts.wait()  # a pending checkpoint still finishes (or fails for lack of space too)
    raise disk_full.error(e, fs.name(workdir), step, ckpts.intact_steps(),
                          fs.name(ckpts.dir)) from None
  finally:
    restore_signals()
    if not no_space:  # (a pending checkpoint finishes; after a full disk it cannot)
      ckpts.wait()
    writer.close(failed=no_space)
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


def _console_fields(objective, values: dict[str, float]) -> dict[str, float]:
  """The objective's console metrics, then the optimizer's (and any skipped images)."""
  keys = [*objective.console_metrics(), "grad_norm", "lr"]
  out = {k: values[k] for k in keys if k in values}
  if values.get("skipped_images"):
    out["skipped_images"] = values["skipped_images"]
  return out


def _replicate(tree, sharding):
  """Host arrays, identical on every process -> global arrays replicated on the mesh."""
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)
