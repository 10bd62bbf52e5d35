"""What a run keeps in its workdir besides checkpoints: the lock that allows one
run per workdir, and config.json with the check that a resumed run trains with
the config its checkpoints were made with.

The lock is a small JSON file (host, pid, start, heartbeat) that a thread of the
holder rewrites every ``HEARTBEAT_S``. Another run refuses to start while it is
held; a lock is stale, and taken over, when its process is gone (same host) or
its heartbeat is older than ``stale_after_s`` (another host, e.g. a requeued job
on a new VM after the old one was lost).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

import ml_collections

from ebm_pretrain import fs, tasks
from ebm_pretrain.trees import dotted

LOCK_FILE = "run.lock"
PLUGIN_FILE = "objective.json"  # a plug-in objective's registered name and its module
HEARTBEAT_S = 30.0
CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"

# Keys a resumed run may change without --config.allow_config_change: how often
# it logs, saves and evaluates, and where it finds its data. Nothing here changes
# what is trained.
MAY_CHANGE_ON_RESUME = (
    "log_every", "checkpoint_every", "keep_checkpoints", "image_every", "image_count",
    "eval_every", "eval_batch_size", "data.num_workers", "data.data_dir", "data.idx_dir",
    "allow_config_change", "lock_stale_seconds", "stall_log_steps", "checkpoint_timeout_s")


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """``with WorkdirLock(workdir): ...`` holds the workdir for this process."""

  def __init__(self, workdir: str, stale_after_s: float = 300.0,
               heartbeat_s: float = HEARTBEAT_S, log=print):
    self.path = fs.path(workdir) / LOCK_FILE
    self.stale_after_s, self.heartbeat_s, self.log = stale_after_s, heartbeat_s, log
    self.token = uuid.uuid4().hex
    self._info = dict(host=socket.gethostname(), pid=os.getpid(), token=self.token,
                      started=time.time(), command=" ".join(sys.argv))
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # half-written or unreadable: treat as held, age by mtime
      try:
        return {"heartbeat": self.path.stat().mtime, "host": "?", "pid": -1}
      except OSError:
        return None

  def _stale_reason(self, info: dict) -> str | None:
    if info.get("host") == socket.gethostname() and info.get("pid", -1) > 0 \
        and not _pid_alive(int(info["pid"])):
      return f"its process {info['pid']} on this host is gone"
    age = time.time() - float(info.get("heartbeat", 0))
    if age > self.stale_after_s:
      return f"its heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} s)"
    return None

  def _write(self, exclusive: bool = False) -> None:
    text = json.dumps(dict(self._info, heartbeat=time.time()))
    if exclusive and not fs.is_cloud(self.path):
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return
    fs.write_text(self.path, text)

  def acquire(self) -> None:
    info = self._read()
    if info is not None:
      reason = self._stale_reason(info)
      if reason is None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        raise WorkdirError(
            f"{self.path.parent} is in use by another run: pid {info.get('pid')} on host "
            f"{info.get('host')}, started {started} (lock file {self.path}). Wait for it "
            "to finish, or stop it; if it is gone, its lock goes stale "
            f"{self.stale_after_s:.0f} s after its last heartbeat, or remove the file.")
      self.log(f"Taking over a stale lock of pid {info.get('pid')} on host "
               f"{info.get('host')}: {reason}")
      self.path.unlink(missing_ok=True)
    try:
      self._write(exclusive=True)
    except FileExistsError:
      raise WorkdirError(f"{self.path.parent}: another run took the lock {self.path} at "
                         "the same moment; not starting") from None
    # A cloud store has no exclusive create: read back, the last writer wins.
    if fs.is_cloud(self.path) and (self._read() or {}).get("token") != self.token:
      raise WorkdirError(f"{self.path.parent}: another run took the lock {self.path} at "
                         "the same moment; not starting")
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        self._write()
      except OSError:  # a passing storage error: the next beat tries again
        pass

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if (self._read() or {}).get("token") == self.token:
      self.path.unlink(missing_ok=True)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def remove_lock_of(workdir: str, pid: int) -> None:
  """Removes the workdir's lock if this host's process ``pid`` (now dead) held it."""
  path = fs.path(workdir) / LOCK_FILE
  try:
    info = json.loads(path.read_text())
    if info.get("host") == socket.gethostname() and info.get("pid") == pid:
      path.unlink(missing_ok=True)
  except (OSError, ValueError):
    pass


# ----------------------------------------------------------------------------
# config.json.
# ----------------------------------------------------------------------------
def as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def config_changes(saved: dict, config: dict) -> dict[str, tuple]:
  """Keys whose values differ between two configs (as JSON), except those a
  resumed run may change; keys only one side has (added to or removed from the
  recipes by a code change) are not compared."""
  a, b = dotted(saved), dotted(config)
  return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys())
          if a[k] != b[k] and k not in MAY_CHANGE_ON_RESUME}


def write_config(workdir: str, config: ml_collections.ConfigDict, *, resuming_at: int | None,
                 write: bool = True, log=print) -> None:
  """Writes config.json (every process checks, ``write`` says which one writes).
  When resuming (``resuming_at`` = the checkpoint's step),
  a config that differs from the saved one is refused, listing every differing
  key, unless ``config.allow_config_change``; then the change is recorded in
  config_changes.jsonl and the new config saved. Checkpoints without a saved
  config (it was deleted) resume with a warning: nothing to check against."""
  p = fs.path(workdir) / CONFIG_FILE
  new = as_json(config)
  if resuming_at is not None and not p.exists() and write:
    log(f"Warning: {workdir} holds checkpoints (step {resuming_at}) but no {CONFIG_FILE}: "
        "this config cannot be checked against the one they were made with; it is saved now.")
  if resuming_at is not None and p.exists():
    saved = json.loads(p.read_text())
    tasks.upgrade(saved)  # a run begun before config.objective named every objective
    changes = config_changes(saved, new)
    if changes:
      lines = "\n".join(f"  {k}: {old!r} -> {now!r}" for k, (old, now) in changes.items())
      if not config.allow_config_change:
        raise WorkdirError(
            f"{workdir} holds a run (checkpoint step {resuming_at}) made with another config; "
            f"resuming would change:\n{lines}\nRun with the same config, use a new "
            "--workdir, or pass --config.allow_config_change=True to resume with these "
            "changes (they are then recorded in config_changes.jsonl).")
      if not write:
        return
      record = {"step": resuming_at, "time": time.time(),
                "changes": {k: list(v) for k, v in changes.items()}}
      f = fs.AppendFile(fs.path(workdir) / CONFIG_CHANGES_FILE)
      f.write(json.dumps(record) + "\n")
      f.close()
      log(f"Resuming at step {resuming_at} with a changed config (recorded in "
          f"{CONFIG_CHANGES_FILE}):\n{lines}")
  if write:
    fs.write_text(p, config.to_json_best_effort(indent=2))


def write_plugin(workdir: str, objective: str, module: str | None) -> None:
  """Records which module registered ``objective`` when it is not the package's
  (``pretrained.load`` names it to the user; it never imports it itself)."""
  if module:
    fs.write_text(fs.path(workdir) / PLUGIN_FILE,
                  json.dumps(dict(objective=objective, module=module)))


def read_plugin(workdir: str, objective: str) -> str | None:
  """The module recorded for ``objective`` in ``workdir``, if any."""
  try:
    record = json.loads((fs.path(workdir) / PLUGIN_FILE).read_text())
  except (OSError, ValueError):
    return None
  return record.get("module") if record.get("objective") == objective else None


def prepare(workdir: str, primary: bool) -> None:
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
    raise WorkdirError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
