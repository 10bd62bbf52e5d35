"""A multi-process run one of whose processes dies: every survivor stops within
JAX's heartbeat timeout with one line of ours and exit 75, and a rerun of all
processes resumes.

Detection is the coordination service's own (``jax.distributed``): the
service notices a process whose heartbeats stopped (``--heartbeat_timeout_s``,
jax's default 100 s) and propagates the error to every other process, and a
process that loses the service (the coordinator, process 0, died) learns it
at its next poll. On that error jaxlib's client ends the process from a C++
thread with ``LOG(FATAL)``: a C++ abort dump, and no Python code runs (the
Python binding's ``missed_heartbeat_callback`` cannot receive the error: its
``absl::Status`` has no Python type, and the process terminates with
``std::bad_cast``). So a multi-process CLI run is one small supervising
process (:func:`supervise`, no JAX computation) around the trainer: it relays
the trainer's output, keeps the coordination service's dump for itself, and
when the trainer ends by it prints the line :func:`message` makes. A
collective that fails first (gloo: the peer's socket closed) is the same loss
seen sooner: the trainer itself ends with that line (:func:`is_collective_loss`).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

EXIT_PEER_LOST = 75  # as a preempted run: nothing bad saved, rerun to resume
CHILD_ENV = "EBM_PRETRAIN_SUPERVISED"

# Where the coordination service's fatal error begins in the trainer's stderr.
_FATAL_START = re.compile(
    r"Polled an error from coordination service|Terminating process because the JAX "
    r"distributed service detected fatal errors|Use error polling to propagate the following "
    r"error to all tasks")
# What the coordination client logs as the service goes away, before the fatal
# error (or, in the trainer's own collective-loss line, instead of it).
_SERVICE_NOISE = re.compile(r"preemption_sync_manager\.cc|coordination_service_agent\.cc|"
                            r"coordination_service\.cc|Additional GRPC error information|"
                            r"Error received from peer")
_MAX_HELD = 2000  # lines
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d\s,]+)")
_TASK_TIMEOUT = re.compile(r"Task (\d+) heartbeat timeout")
_SERVICE_GONE = re.compile(r"Socket closed|Connection refused|failed to connect to all addresses"
                           r"|Connection reset by peer")
# A gloo collective whose peer went away (the trainer's own exception).
_COLLECTIVE_LOSS = re.compile(r"[Gg]loo.*(Connection reset by peer|Connection closed by peer"
                              r"|Socket closed|Broken pipe|Read error|Write error)")


def lost_process(text: str) -> tuple[str, bool]:
  """Which process the coordination service's error names, in words, and
  whether its heartbeats timed out (else its connection closed)."""
  m = _UNHEALTHY.search(text)
  ids = sorted({int(i) for i in re.findall(r"\d+", m.group(1))}) if m else []
  if not ids:
    ids = sorted({int(i) for i in _TASK_TIMEOUT.findall(text)})
  if ids:
    return "process " + ", ".join(map(str, ids)), True
  if _SERVICE_GONE.search(text):
    return "process 0 (the coordinator)", False
  return "a peer process", False


def collective_peer(num_processes: int | None, process_id: int | None) -> str:
  """Who a failed collective lost: of two processes, the other one."""
  if num_processes == 2 and process_id in (0, 1):
    return "process 0 (the coordinator)" if process_id == 1 else "process 1"
  return "a peer process"


def is_collective_loss(e: BaseException) -> bool:
  return bool(_COLLECTIVE_LOSS.search(str(e)))


def intact_steps(workdir: str | None) -> list[int]:
  if not workdir:
    return []
  from ebm_pretrain import fs
  try:
    return sorted(int(p.name) for p in (fs.path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())
  except OSError:
    return []


def message(lost: str, workdir: str | None, num_processes: int | None,
            heartbeat_timeout_s: int | None = None) -> str:
  """The survivors' line; ``heartbeat_timeout_s`` when that is how the loss was seen."""
  steps = intact_steps(workdir)
  how = f" (no heartbeat for {heartbeat_timeout_s} s, --heartbeat_timeout_s)" \
      if heartbeat_timeout_s else " (its connection closed)"
  saved = (f"steps {steps} in {workdir}/checkpoints are intact and nothing after the loss was "
           f"saved; rerun all {num_processes or 'the'} processes with the same command: the run "
           f"resumes from step {steps[-1]}" if steps else
           "no checkpoint was saved before it; rerun all processes with the same command")
  return f"lost {lost} of the multi-process run{how}: stopping; {saved}"


def _flag(argv: list[str], name: str) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def is_supervised() -> bool:
  return os.environ.get(CHILD_ENV) is not None


def die_with_supervisor() -> None:
  """In the trainer (Linux): killed when its supervising process dies, so that
  ``kill -9`` of the process a user started ends the run's process too."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != os.environ.get(CHILD_ENV):  # it died before the prctl
    os._exit(EXIT_PEER_LOST)


def supervise(argv: list[str], heartbeat_timeout_s: int | None) -> int:
  """Runs ``python -m ebm_pretrain.main ARGV`` as the trainer and returns the
  exit status this process should end with."""
  child = subprocess.Popen(
      [sys.executable, "-m", "ebm_pretrain.main", *argv[1:]], stderr=subprocess.PIPE,
      env=dict(os.environ, **{CHILD_ENV: str(os.getpid())}))
  # Ctrl-C reaches the trainer from the terminal; a SIGTERM sent to this process
  # alone (a scheduler's) is passed on: the trainer agrees on it with its peers.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
  held: list[str] = []     # from the coordination service's fatal error on
  noise: list[str] = []    # its client's warnings: shown at the end unless a loss explains them

  def relay():
    for raw in iter(child.stderr.readline, b""):
      line = raw.decode(errors="replace")
      if held or _FATAL_START.search(line):
        held.append(line)  # the coordination service's dump: kept for the line below
      elif _SERVICE_NOISE.search(line) and len(noise) < _MAX_HELD:
        noise.append(line)
      else:
        sys.stderr.write(line)
        sys.stderr.flush()
  reader = threading.Thread(target=relay, daemon=True)
  reader.start()
  status = child.wait()
  reader.join()
  if not held:
    if status != EXIT_PEER_LOST:  # (the trainer said the loss itself: a collective failed)
      sys.stderr.write("".join(noise))
    return status if status >= 0 else 128 - status
  workdir = _flag(argv, "workdir")
  if workdir:
    from ebm_pretrain import workdir as workdir_lib
    workdir_lib.remove_lock_of(workdir, child.pid)
  nproc = _flag(argv, "num_processes")
  lost, by_heartbeat = lost_process("".join(held))
  print("error: " + message(lost, workdir, int(nproc) if nproc else None,
                            heartbeat_timeout_s if by_heartbeat else None),
        file=sys.stderr, flush=True)
  return EXIT_PEER_LOST
