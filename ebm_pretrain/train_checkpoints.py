"""The trainer's checkpoints: ``checkpoints/`` (the last steps' train state and
data iterator, to resume from) and ``best/`` (the best-evaluated parameters).
Never a non-finite state, never a half-written step picked up; an unreadable
newest step is set aside for the newest readable one; a write that times out
or finds no space is one error naming what is intact.
"""
from __future__ import annotations

import contextlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from ebm_pretrain import disk_full, fs
from ebm_pretrain.checkpoints import UNREADABLE_DIR, first_line, model_params, muted_stderr
from ebm_pretrain.errors import CheckpointError, NonFiniteStateError, NoSpaceError
from ebm_pretrain.trees import all_finite, nonfinite_leaves


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
        with muted_stderr():
          meta = self.manager.item_metadata(step)["state"]
        _check_structure(meta, abstract_state, self.dir / str(step))
        with muted_stderr():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iter)))
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any storage/format error)
        skipped.append((step, first_line(e)))
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
