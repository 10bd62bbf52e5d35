"""The trainer: one loop for every objective (big_vision's train.py layout).

Sections: setup, mesh, input, model, optimizer, state & checkpoint, update step,
evaluation, loop. The train state is an explicit pytree
``{"params", "opt", "step", "rng"}``, replicated over a 1-D ``data`` mesh of all
devices (all processes); batches are sharded along it. Per-step randomness is
``fold_in(rng, step)``, so a resumed run draws exactly what an uninterrupted one
would. Metrics stay on device until a log step.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ebm_pretrain import config_lib, metrics as metrics_lib, objectives
from ebm_pretrain.data import pipeline, sources


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------
# Optimizer.
# ----------------------------------------------------------------------------
def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params) -> Any:
  """Weight decay on Dense/Conv kernels only: never on norms, biases, position
  embeddings, the cls token or alpha (MAE / paper Table A)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _path_str(p).endswith("kernel"), params)


def learning_rate_schedule(config, total_steps: int, steps_per_epoch: float):
  o = config.optim
  peak = o.base_lr * config.batch_size / o.lr_base_batch
  warmup = o.warmup_steps or int(round(o.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                            end_value=o.min_lr)


def make_optimizer(config, params, objective, schedule):
  o = config.optim
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.grad_clip > 0:
    adamw = optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "frozen" if objective.frozen(_path_str(p)) else "train", params)
  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


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
def make_train_step(objective, tx, schedule, mean, std):
  """``(state, batch) -> (state, metrics)``: one optimizer step on a uint8 batch."""
  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    batch = dict(batch, image=normalize(batch["image"], mean, std))
    (loss, aux), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        state["params"], batch, rng)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "lr": schedule(state["step"]),
           "skipped_images": jnp.sum(~batch["valid"]).astype(jnp.float32), **aux}
    new_state = {"params": params, "opt": opt, "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, out
  return train_step


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None) -> tuple[dict, dict[str, float]]:
  """Trains until ``total_steps`` (resuming from ``workdir`` if possible);
  returns the final train state and the last logged metrics. ``devices``
  defaults to every device of every process."""
  # == Setup ===================================================================
  devices = list(devices or jax.devices())
  nproc, pidx = jax.process_count(), jax.process_index()
  primary = pidx == 0
  config_lib.validate(config, len(devices), nproc)
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # == Mesh ====================================================================
  mesh = Mesh(np.asarray(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  # == Input ===================================================================
  d = config.data
  source = sources.get_source(d, d.split)
  total_steps, steps_per_epoch = total_steps_of(config, len(source))
  train_ds = pipeline.make_train_dataset(
      source, global_batch=config.batch_size, num_batches=total_steps,
      image_size=d.image_size, channels=d.channels, seed=config.seed, process_index=pidx,
      process_count=nproc, num_workers=d.num_workers)
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

  def init_state(rng):
    params = objective.init(rng, dummy)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": train_rng}

  state_shapes = jax.eval_shape(init_state, init_rng)
  state_sharding = jax.tree.map(lambda _: replicated, state_shapes)

  # == State & checkpoint ======================================================
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  manager = ocp.CheckpointManager(
      ckpt_dir,
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           enable_async_checkpointing=True),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})
  start = manager.latest_step()  # only finalised checkpoints are listed
  if start is not None:
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            state_shapes, state_sharding)
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(train_iter)))
    state = restored["state"]
    logging.info("resumed from %s at step %d", ckpt_dir, start)
    if primary:
      print(f"Resuming from checkpoint step {start} in {ckpt_dir}", flush=True)
  else:
    start = 0
    state = jax.jit(init_state, out_shardings=state_sharding)(init_rng)
  start = int(start)

  # == Update step =============================================================
  train_step = make_train_step(objective, tx, schedule, mean, std)
  train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  @functools.partial(jax.jit, out_shardings=replicated)
  def visualize(params, batch, rng):
    k = config.image_count
    small = {key: v[:k] for key, v in batch.items()}
    small["image"] = normalize(small["image"], mean, std)
    return objective.visualize(params, small, rng)

  # == Evaluation ==============================================================
  def evaluate(params) -> dict[str, float]:
    return evaluate_restoration(config, objective, params, to_global, pidx, nproc)

  # == Loop ====================================================================
  writer = metrics_lib.MetricWriter(workdir, enabled=primary)
  console = metrics_lib.ConsoleReporter(total_steps, start, enabled=primary)
  # Preemption: one process catches SIGTERM itself. With several processes all
  # must stop at the same step, so JAX's coordination service (which
  # jax.distributed hooks to SIGTERM) agrees on it through Orbax.
  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s)) if nproc == 1 else None

  def save(step: int, unchecked: list[dict]):
    _check_finite(unchecked, step)  # never checkpoint a non-finite state
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)))

  pending: list[dict] = []
  last: dict[str, float] = {}
  t_log, step = time.time(), start
  try:
    for step in range(start + 1, total_steps + 1):
      batch = to_global(next(train_iter))
      state, m = train_step(state, batch)
      pending.append(m)
      console.update(step)

      if step % config.log_every == 0 or step == total_steps:
        host = _check_finite(pending, step)
        last = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
        last["skipped_images"] = float(np.sum([h["skipped_images"] for h in host]))
        dt = time.time() - t_log
        img_s = len(pending) * config.batch_size / max(dt, 1e-9)
        epoch = step / steps_per_epoch
        writer.scalars(step, {**last, "epoch": epoch, "img_per_s": img_s})
        console.line(step, epoch, _console_fields(last), img_s)
        pending, t_log = [], time.time()

      if step % config.image_every == 0 or step == total_steps:
        grids = jax.device_get(visualize(state["params"], batch, jax.random.fold_in(vis_rng, step)))
        path = writer.image(step, "restoration", metrics_lib.image_grid(grids, mean, std))
        if path and step == total_steps:
          print(f"Restoration grid (corrupted | steps | original): {path}", flush=True)

      if nproc > 1 and manager.reached_preemption(step):
        stop["signal"] = signal.SIGTERM
      if step % config.checkpoint_every == 0 or step == total_steps or stop["signal"]:
        save(step, pending)
      if stop["signal"]:
        manager.wait_until_finished()
        logging.warning("SIGTERM: checkpoint saved at step %d, exiting", step)
        print(f"Preempted (SIGTERM): checkpoint saved at step {step}; rerun to resume.",
              flush=True)
        return state, last
    manager.wait_until_finished()
    if config.get("eval_examples", 0) and total_steps > start:
      ev = evaluate(state["params"])
      writer.scalars(total_steps, ev)
      last.update(ev)
      if primary:
        print("Eval: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()), flush=True)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    console.close()
  if primary:
    print(f"Done: step {step}. Checkpoints: {ckpt_dir}  Metrics: "
          f"{os.path.join(workdir, 'metrics.jsonl')}  TensorBoard: "
          f"{os.path.join(workdir, 'tensorboard')}", flush=True)
  return state, last


def _check_finite(pending: list[dict], step: int) -> list[dict]:
  host = jax.device_get(pending)
  for i, h in enumerate(host):
    if not np.isfinite(h["loss"]):
      bad = step - len(host) + i + 1
      raise NonFiniteLossError(
          f"loss is {h['loss']} at step {bad}: stopping. The last checkpoint (before this "
          "step) is intact; lower optim.base_lr or alpha.init, or set optim.grad_clip.")
  return host


def _console_fields(values: dict[str, float]) -> dict[str, float]:
  keys = ["loss"] + sorted(k for k in values if k.startswith("step_error")) + [
      "corrupted_error", "alpha", "grad_norm", "lr"]
  out = {k: values[k] for k in keys if k in values}
  if values.get("skipped_images"):
    out["skipped_images"] = values["skipped_images"]
  return out


# ----------------------------------------------------------------------------
# Held-out restoration quality.
# ----------------------------------------------------------------------------
def evaluate_restoration(config, objective, params, to_global, pidx, nproc) -> dict[str, float]:
  """PSNR (pixel space, [0, 1]) of the corrupted and of each restored image vs
  the clean one, over ``eval_examples`` images of ``data.eval_split``."""
  d = config.data
  source = sources.get_source(d, d.eval_split)
  ds = pipeline.make_eval_dataset(
      source, batch_size=config.eval_batch_size // nproc, image_size=d.image_size,
      channels=d.channels, resize_to=d.image_size, process_index=pidx, process_count=nproc,
      num_examples=config.eval_examples)
  mean, std = jnp.asarray(d.mean), jnp.asarray(d.std)

  @jax.jit
  def sq_errors(params, batch, rng):
    stages = objective.visualize(params, dict(batch, image=normalize(batch["image"], d.mean, d.std)), rng)
    clean = batch["image"].astype(jnp.float32) / 255.0
    w = batch["valid"].astype(jnp.float32)
    out = {}
    for name, x in stages.items():
      if name == "original":
        continue
      pix = jnp.clip(x * std + mean, 0.0, 1.0)
      out[name] = jnp.sum(w * jnp.mean((pix - clean) ** 2, axis=(1, 2, 3)))
    out["count"] = jnp.sum(w)
    return out

  totals: dict[str, float] = {}
  rng = jax.random.PRNGKey(config.seed + 1)
  for i, local in enumerate(ds):
    s = jax.device_get(sq_errors(params, to_global(local), jax.random.fold_in(rng, i)))
    for k, v in s.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = max(totals.pop("count", 0.0), 1.0)
  return {f"eval/psnr_{k}": float(10 * np.log10(1.0 / max(v / n, 1e-12)))
          for k, v in totals.items()}
