"""Finding and reading checkpoints outside the trainer: the newest readable step
of a workdir, its config, its parameters (only those, on the host). The
trainer's own checkpoints: ``train_checkpoints.py``; carrying a backbone into a
new model (a workdir, a step folder, a timm file): ``transfer.py``.

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

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ebm_pretrain import fs, tasks
from ebm_pretrain.errors import CheckpointError


UNREADABLE_DIR = "unreadable_checkpoints"


def first_line(e: BaseException) -> str:
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
    raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
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


def read_config(found: Found) -> ml_collections.ConfigDict:
  if found.workdir is None:
    raise CheckpointError(f"no config.json next to {found.checkpoints_dir}: cannot tell "
                          "which model the checkpoint holds")
  try:
    config = json.loads((fs.path(found.workdir) / "config.json").read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {found.workdir}/config.json: {first_line(e)}") from None
  tasks.upgrade(config)  # objective names of checkpoints written before config.objective
  return ml_collections.ConfigDict(config)


def _drop_orbax_read_errors(unraisable, _default=sys.unraisablehook) -> None:
  """``sys.unraisablehook`` without the reads a failed restore abandoned (see
  :func:`muted_stderr`); everything else as before."""
  if getattr(unraisable.object, "__name__", "") == "_read_array_index_and_device_put":
    return
  _default(unraisable)


@contextlib.contextmanager
def muted_stderr():
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
        with muted_stderr():
          meta = dict(mngr.item_metadata(step)["state"])
          item = {k: jax.tree.map(lambda m: np.zeros((), m.dtype), meta[k])
                  for k in keys if k in meta}
          restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
          out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              item=item, restore_args=restore_args, partial_restore=True)))
      except Exception as e:  # pylint: disable=broad-except  (any storage/format error)
        skipped.append(f"step {step} ({first_line(e)})")
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
