"""All of the Orbax layout. The trainer's checkpoints (:class:`TrainCheckpoints`:
``checkpoints/``, the last steps' train state and data iterator, and ``best/``,
the best-evaluated parameters), and reading them outside the trainer: find the
newest readable step of a workdir, read its config, restore its parameters (only
those, on the host), and carry a pretrained backbone into a new model.

A checkpoint path may be a workdir (``config.json`` + ``checkpoints/``), its
``checkpoints`` folder, or one step folder inside it (``checkpoints/1000``),
local or on cloud storage (every path goes through :mod:`ebm_pretrain.fs`).
A step that cannot be read (a truncated file, a lost object) is skipped for the
newest older one that can, with a message; it is never deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ebm_pretrain import disk_full, fs, models, tasks
from ebm_pretrain.errors import CheckpointError, ConfigError, NonFiniteStateError, NoSpaceError


UNREADABLE_DIR = "unreadable_checkpoints"


def _first_line(e: BaseException) -> str:
  """``Type: first line`` of an error (of its cause, where Orbax wraps one)."""
  e = e.__cause__ or e
  text = str(e).split(" See full TensorStore details")[0].strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:240]


@dataclasses.dataclass(frozen=True)
class Found:
  checkpoints_dir: str
  step: int
  workdir: str | None  # holds config.json, when the layout is the trainer's
  # Finalised steps, newest first, that a reader may fall back to when ``step``
  # cannot be read (empty when a step folder was named explicitly).
  fallbacks: tuple[int, ...] = ()


def find(path: str) -> Found:
  p = fs.path(path)
  try:
    exists = p.exists()
  except (OSError, ImportError) as e:
    raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None
  if not exists:
    raise CheckpointError(f"no checkpoint at {p}: the path does not exist")
  step = None
  if (p / "checkpoints").is_dir():
    ckpt_dir = p / "checkpoints"
  elif re.fullmatch(r"\d+", p.name) and (p / "state").is_dir():
    ckpt_dir, step = p.parent, int(p.name)
  else:
    ckpt_dir = p
  steps = sorted(ocp.utils.checkpoint_steps(ckpt_dir), reverse=True) if ckpt_dir.is_dir() else []
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(
        f"no checkpoint at {p}: expected a workdir with a finalised checkpoint in "
        "checkpoints/, a checkpoints folder, or one step folder (checkpoints/N) of a run")
  parent = ckpt_dir.parent
  workdir = os.fspath(parent) if (parent / "config.json").is_file() else None
  if step is not None:
    return Found(os.fspath(ckpt_dir), step, workdir)
  return Found(os.fspath(ckpt_dir), steps[0], workdir, tuple(steps[1:]))


# ----------------------------------------------------------------------------
# timm files: --config.init=FILE.safetensors (python -m ebm_pretrain.export, or timm's).
# ----------------------------------------------------------------------------
TIMM_SUFFIX = ".safetensors"


def is_timm_file(path: str) -> bool:
  return str(path).endswith(TIMM_SUFFIX)


def read_timm_config(path: str) -> dict:
  """The config.json beside a timm file (architecture, kwargs, input_size): how
  to build the model it holds. CheckpointError if there is none."""
  cfg = fs.path(path).parent / "config.json"
  try:
    out = json.loads(cfg.read_text())
    missing = {"architecture", "kwargs", "input_size"} - set(out)
    if missing:
      raise ValueError(f"it has no {', '.join(sorted(missing))}")
    return out
  except (OSError, ValueError) as e:
    raise CheckpointError(
        f"no usable config.json (architecture, kwargs) beside {path} ({_first_line(e)}): name "
        "the model it holds, e.g. --config.model.name=vit --config.model.variant=S/16 "
        "--config.data.image_size=224") from None


def read_timm(path: str) -> dict[str, np.ndarray]:
  """The state dict of a timm safetensors file (numpy; no torch)."""
  from safetensors.numpy import load_file
  try:
    return load_file(os.fspath(fs.path(path)))
  except Exception as e:  # pylint: disable=broad-except  (missing, truncated, not safetensors)
    raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None


def read_config(found: Found) -> ml_collections.ConfigDict:
  if found.workdir is None:
    raise CheckpointError(f"no config.json next to {found.checkpoints_dir}: cannot tell "
                          "which model the checkpoint holds")
  try:
    config = json.loads((fs.path(found.workdir) / "config.json").read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {found.workdir}/config.json: {_first_line(e)}") from None
  tasks.upgrade(config)  # objective names of checkpoints written before config.objective
  return ml_collections.ConfigDict(config)


def _drop_orbax_read_errors(unraisable, _default=sys.unraisablehook) -> None:
  """``sys.unraisablehook`` without the reads a failed restore abandoned (see
  :func:`_muted_stderr`); everything else as before."""
  if getattr(unraisable.object, "__name__", "") == "_read_array_index_and_device_put":
    return
  _default(unraisable)


@contextlib.contextmanager
def _muted_stderr():
  """Sends file descriptor 2 to a scratch file for the duration. A restore that
  fails inside Orbax leaves its pending TensorStore reads to fail later, each
  printing a traceback from a background thread ("Event loop is closed",
  "Exception ignored in ... _read_array_index_and_device_put"): one message of
  ours says the same. After a failure the last of them are let finish here."""
  import gc
  import tempfile
  import time
  sys.stderr.flush()
  saved = os.dup(2)
  failed = False
  with tempfile.TemporaryFile() as scratch:
    os.dup2(scratch.fileno(), 2)
    try:
      yield
    except BaseException:
      failed = True
      sys.unraisablehook = _drop_orbax_read_errors
      raise
    finally:
      if failed:
        gc.collect()
        time.sleep(0.2)
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


@contextlib.contextmanager
def _quiet():
  """Orbax warns, at length, about reading a run's folder read-only and about the
  data-iterator item it is not asked for; both are expected here."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def restore_state(found: Found, keys=("params",), log=print) -> tuple[int, dict]:
  """(step, the ``keys`` entries of its saved train state as host numpy arrays);
  the rest (optimizer state) is not read. The newest readable step: an
  unreadable one is skipped (with a message) for the next older one, unless the
  step was named explicitly."""
  skipped = []
  with _quiet(), ocp.CheckpointManager(
      found.checkpoints_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    for step in (found.step, *found.fallbacks):
      try:
        with _muted_stderr():
          meta = dict(mngr.item_metadata(step)["state"])
          item = {k: jax.tree.map(lambda m: np.zeros((), m.dtype), meta[k])
                  for k in keys if k in meta}
          restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
          out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              item=item, restore_args=restore_args, partial_restore=True)))
      except Exception as e:  # pylint: disable=broad-except  (any storage/format error)
        skipped.append(f"step {step} ({_first_line(e)})")
        continue
      if skipped:
        log(f"Skipped unreadable checkpoints in {found.checkpoints_dir}: {'; '.join(skipped)}")
      return step, dict(out["state"])
  raise CheckpointError(f"cannot read the checkpoint{'s' if len(skipped) > 1 else ''} in "
                        f"{found.checkpoints_dir}: {'; '.join(skipped)}")


def model_params(state: dict):
  """The parameters a run delivers: their moving average where it keeps one
  (``config.ema_decay``), else the trained ones."""
  return state["ema"] if "ema" in state else state["params"]


def restore_params(found: Found) -> dict:
  return model_params(restore_state(found, ("params", "ema"))[1])


# ----------------------------------------------------------------------------
# The trainer's checkpoints.
# ----------------------------------------------------------------------------
def _inexact(tree) -> list[tuple[Any, jax.Array]]:
  return [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value of ``tree`` is finite (traceable)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in _inexact(tree)] or
                           [jnp.asarray(True)]))


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point leaves of ``tree`` that hold NaN or inf."""
  leaves = _inexact(tree)
  ok = jax.device_get(_leaves_finite([x for _, x in leaves]))
  return [jax.tree_util.keystr(p, simple=True, separator="/")
          for (p, _), good in zip(leaves, ok) if not good]


@jax.jit
def _leaves_finite(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


class TrainCheckpoints:
  """``checkpoints/``: the last ``keep`` steps, train state + data iterator, to
  resume from; ``best/`` (with ``best_metric``): the one state with the best
  held-out metric so far. Never saves a non-finite state; resumes from the
  newest readable step, moving unreadable newer ones to ``unreadable_checkpoints/``
  (kept, not deleted) so that the run can save those steps again."""

  def __init__(self, workdir: str, *, keep: int, best_metric: str = "",
               best_mode: str = "max", timeout_s: int = 3600, log=print):
    root = fs.path(workdir)
    self.dir, self.root, self.log = root / "checkpoints", root, log
    self.best_metric, self.best = best_metric, None
    self.timeout_s, self._writing, self._failed = int(timeout_s), {}, False
    async_options = ocp.AsyncOptions(timeout_secs=self.timeout_s)
    try:
      self.manager = ocp.CheckpointManager(
          self.dir,
          options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=True,
                                               async_options=async_options),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": grain.checkpoint.CheckpointHandler()})
      if best_metric:
        self.best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                best_mode=best_mode, keep_checkpoints_without_metrics=False,
                async_options=async_options),
            item_handlers={"state": ocp.StandardCheckpointHandler()})
    except ImportError as e:  # Orbax on gs:// asks google-cloud-storage about the bucket
      raise CheckpointError(f"cannot checkpoint to {self.dir}: {e}. Cloud workdirs need "
                            "pip install 'ebm_pretrain[gcs]'") from None

  def restore(self, abstract_state, data_iter) -> tuple[int, Any] | None:
    """(step, state) of the newest readable checkpoint, the data iterator set to
    it; None when there is none. A checkpoint of another state structure (the
    config changed) is a CheckpointError, not an unreadable one."""
    skipped = []
    for step in sorted(self.manager.all_steps(), reverse=True):  # only finalised steps
      try:
        with _muted_stderr():
          meta = self.manager.item_metadata(step)["state"]
        _check_structure(meta, abstract_state, self.dir / str(step))
        with _muted_stderr():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iter)))
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any storage/format error)
        skipped.append((step, _first_line(e)))
        continue
      self._set_aside(skipped)
      return step, restored["state"]
    if skipped:
      raise CheckpointError(
          f"no readable checkpoint in {self.dir}: "
          + "; ".join(f"step {s} ({why})" for s, why in skipped)
          + ". Nothing was moved or deleted; use a new --workdir to start afresh.")
    return None

  def _set_aside(self, skipped: list[tuple[int, str]]) -> None:
    if not skipped:
      return
    aside = self.root / UNREADABLE_DIR
    if jax.process_index() == 0:  # one process moves; every process then sees it
      aside.mkdir(parents=True, exist_ok=True)
      for step, why in skipped:
        dst = aside / str(step)
        n = 1
        while dst.exists():
          dst, n = aside / f"{step}.{n}", n + 1
        (self.dir / str(step)).rename(dst)
        self.log(f"Checkpoint step {step} is unreadable ({why}): skipped, moved to {dst}")
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("ebm_pretrain:unreadable_checkpoints_moved")
    self.manager.reload()

  def save(self, step: int, state, data_iter, finite=None) -> None:
    """Saves asynchronously; raises NonFiniteStateError, saving nothing, if any
    parameter or optimizer value is NaN or inf. ``finite``: the caller's
    :func:`all_finite` of the state, if it has it (else it is computed here)."""
    bad = nonfinite_leaves(state) if finite is None or not bool(finite) else []
    if bad:
      raise NonFiniteStateError(
          f"the train state at step {step} is not finite ({len(bad)} arrays, e.g. "
          f"{', '.join(bad[:3])}): not saved. {self.divergence_advice()}")
    with self._async_write("checkpoints"):  # the previous write's error, named as its own
      self.manager.wait_until_finished()  # (Orbax's save waits for it anyway)
    self._writing["checkpoints"] = step
    with self._async_write("checkpoints"):
      self.manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))

  @contextlib.contextmanager
  def _async_write(self, where: str):
    """Orbax raises the previous asynchronous write's error at the next save or
    wait. A timeout is a CheckpointError, a full disk a NoSpaceError (each one
    line, exit 2) saying which step was lost, what is intact and that a rerun
    resumes. After either, :meth:`wait` and :meth:`close` do nothing."""
    try:
      yield
    except TimeoutError:
      self._failed = True
      done = self.intact_steps()
      raise CheckpointError(
          f"writing step {self._writing.get(where)} to {self.root / where} did not finish "
          f"within {self.timeout_s} s (config.checkpoint_timeout_s): the process was paused "
          "(SIGSTOP, a suspended job) or the storage stalled. "
          + (f"Steps {done} in {self.dir} are intact; rerun the same command to resume from "
             f"step {done[-1]}." if done else "No earlier checkpoint; rerun to start again.")
      ) from None
    except Exception as e:  # pylint: disable=broad-except  (Orbax wraps TensorStore's errors)
      if not disk_full.is_no_space(e):
        raise
      self._failed = True
      step = self._writing.get(where) if self._writing.get(where) is not None else "?"
      raise NoSpaceError(disk_full.message(
          fs.name(self.root / where), step, self.intact_steps(), fs.name(self.dir))) from None

  def intact_steps(self) -> list[int]:
    """The finalised steps in ``checkpoints/`` (a write in progress or abandoned
    lives in a ``STEP.orbax-checkpoint-tmp`` folder, never picked up)."""
    return sorted(int(p.name) for p in self.dir.iterdir() if p.name.isdigit())

  def divergence_advice(self) -> str:
    """What is intact, and what to change, after a run diverged."""
    latest = self.manager.latest_step()
    return ((f"The newest checkpoint, step {latest}, is intact and finite"
             if latest is not None else "No checkpoint was saved before it")
            + "; lower optim.base_lr or alpha.init, or set optim.grad_clip.")

  def save_best(self, step: int, state, metrics: dict[str, float], finite=None) -> None:
    if self.best is None or step in self.best.all_steps():
      return  # (a resumed run may repeat an evaluation whose result is already saved)
    keep = {"params": model_params(state), "model_state": state["model_state"],
            "step": state["step"]}
    if not bool(all_finite(keep) if finite is None else finite):
      self.log(f"Not saving step {step} to best/: its parameters are not finite")
      return
    with self._async_write("best"):
      self.best.wait_until_finished()
    self._writing["best"] = step
    with self._async_write("best"):
      self.best.save(step, metrics=metrics,
                     args=ocp.args.Composite(state=ocp.args.StandardSave(keep)))

  def wait(self) -> None:
    if self._failed:
      return
    with self._async_write("checkpoints"):
      self.manager.wait_until_finished()
    if self.best is not None:
      with self._async_write("best"):
        self.best.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def best_step(self) -> int | None:
    return self.best.best_step() if self.best is not None else None

  def close(self) -> None:
    if self._failed:  # a write timed out or found no space: its error is on its way up
      return
    self.wait()
    self.manager.close()
    if self.best is not None:
      self.best.close()


def _key_names(path) -> str:
  """A key path as 'a/b/0/c', whether its entries are dict keys, attributes
  (optax's named tuples) or indices: Orbax's metadata stores them as dicts."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_structure(meta, abstract_state, where) -> None:
  """CheckpointError when the saved state's arrays (paths and shapes) differ
  from those this config builds."""
  want = {_key_names(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  have = {_key_names(p): tuple(m.shape)
          for p, m in jax.tree_util.tree_flatten_with_path(dict(meta))[0]}
  diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
  if diff:
    raise CheckpointError(
        f"{where} holds another train state than this config builds ({len(diff)} arrays "
        f"differ, e.g. {', '.join(diff[:3])}): was the model or optimizer changed?")


def backbone_of(params: dict) -> dict:
  """The backbone parameters of an energy (``model/backbone``) or a fine-tuned
  (``backbone``) checkpoint."""
  if "backbone" in params:
    return params["backbone"]
  if "model" in params and "backbone" in params["model"]:
    return params["model"]["backbone"]
  raise CheckpointError(f"the checkpoint holds no backbone parameters (top-level keys: "
                        f"{sorted(params)})")


# ----------------------------------------------------------------------------
# Carrying a backbone into a new model.
# ----------------------------------------------------------------------------
def pretrained_backbone(config, target: dict, path: str, log=print) -> dict:
  """``target`` (fresh backbone params of ``config.model``) replaced by the backbone
  of the checkpoint at ``path``, through the family's ``load`` hook
  (``models.load_backbone``); a different model is a CheckpointError. A timm
  file (``.safetensors``) goes through the family's timm mapping first."""
  if is_timm_file(path):
    try:
      loaded = models.timm_mapping(config.model.name).from_timm(read_timm(path),
                                                                config.model.to_dict())
      backbone = models.load_backbone(config.model.to_dict(), target, loaded, log=log)
    except (CheckpointError, ValueError) as e:
      raise CheckpointError(f"{path}: {e}") from None
    log(f"Initialised the backbone from the timm file {path}")
    return backbone
  found = find(path)
  if found.workdir is not None:
    trained = read_config(found).model
    m = config.model
    if (trained.name, trained.variant) != (m.name, m.variant):
      raise CheckpointError(
          f"{path} holds a {trained.name} {trained.variant} backbone; this config builds "
          f"{m.name} {m.variant}. Set --config.model.name={trained.name} "
          f"--config.model.variant={trained.variant}, or point --config.init at a "
          f"{m.name} {m.variant} checkpoint.")
  try:
    backbone = models.load_backbone(config.model.to_dict(), target,
                                    backbone_of(restore_params(found)), log=log)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  log(f"Initialised the backbone from {found.checkpoints_dir} step {found.step}")
  return backbone


# config.model.name when a fine-tuning config takes the checkpoint's backbone.
FROM_INIT = ""


def resolve_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``model`` filled in from the ``init`` checkpoint when the
  config leaves the backbone to it (``model.name == ""``): the checkpoint's
  architecture, made ready for fine-tuning by its family's ``finetune`` hook
  (``models.register_backbone``); for linear probing (``freeze_backbone``) as it
  was trained, so that the probe reads the features pretraining read. Entries
  set in ``config.model`` win."""
  if config.model.name != FROM_INIT:
    return config
  if not config.init:
    raise ConfigError(
        "config.model.name: empty, which means 'the backbone of config.init', but config.init "
        "is empty too: set --config.init=PRETRAINING_WORKDIR, or name a model to train from "
        "scratch (e.g. --config.model.name=vit --config.model.variant=S/16)")
  if is_timm_file(config.init):
    t = read_timm_config(config.init)
    try:
      trained = models.model_of_timm(t["architecture"], t["kwargs"])
    except (ValueError, KeyError) as e:
      raise CheckpointError(f"{config.init}: {e}") from None
  else:
    trained = read_config(find(config.init)).model.to_dict()
  model = dict(trained) if config.freeze_backbone else models.finetune_model(trained)
  model.update({k: v for k, v in config.model.to_dict().items() if k != "name"})
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = ml_collections.ConfigDict(model)
  return config
