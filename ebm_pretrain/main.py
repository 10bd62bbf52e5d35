"""Entry point: ``python -m ebm_pretrain.main --config=configs/vit_b.py --workdir=DIR``.

Parses flags, sets up multi-process JAX when asked, and calls the trainer.
"""
from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ebm_pretrain import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and images go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM, "
    "or the --coordinator_address/--num_processes/--process_id flags).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "Multi-process: a process whose heartbeats stop for this long "
    "is lost, and every other one stops (exit 75) within about this time (jax's default).")

flags.mark_flags_as_required(["config", "workdir"])


def _init_distributed():
  import jax
  explicit = _COORDINATOR.value is not None
  if not (_DISTRIBUTED.value or explicit):
    return
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value, **kwargs)


def _multi_process() -> bool:
  return _DISTRIBUTED.value or _COORDINATOR.value is not None


# Exit statuses (README, "Failure handling").
EXIT_BAD_INPUT = 2   # config, data, workdir or checkpoint: one line says what is wrong
EXIT_DIVERGED = 3    # non-finite loss or state: nothing bad saved, the newest checkpoint intact
EXIT_INTERRUPTED = 130  # a second Ctrl-C, or Ctrl-C before the first step: nothing saved


def _fail(msg: str, status: int = EXIT_BAD_INPUT):
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(status)


def _no_such_key(flag: str) -> str:
  """The line for an override of a key the config lacks; for a key of another
  objective's block (``--config.alpha.init`` on a fine-tuning), whose it is."""
  from ebm_pretrain import schema
  top = flag.removeprefix("--").removeprefix("config.").split(".")[0]
  owners = [] if top in schema.base_keys() else schema.owners(top)
  if owners:
    return (f"{flag}: no such config key in this config: {top!r} belongs to the block of "
            f"the {', '.join(owners)} objective{'s' * (len(owners) > 1)}, which this config "
            "does not train")
  return f"{flag}: no such config key"


def _flag_error_line(e: Exception, argv: list[str]) -> str:
  """One line from absl/ml_collections' flag errors, which embed a traceback or
  a repr'd exception in their text."""
  text = str(e)
  m = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
  if m:
    return f"config key {m.group(2)!r} does not exist; did you mean {m.group(1)!r}?"
  m = re.search(r"Unknown command line flag '(config\.[\w.]+)'", text)
  if m:
    return _no_such_key(f"--{m.group(1)}")
  m = re.fullmatch(r"""["']+([\w.]+)["']+""", text.strip())
  if m:  # a KeyError's repr: the override named a key that does not exist
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and re.search(rf"\.{re.escape(m.group(1))}(\.|$)", a.split("=")[0])),
                m.group(1))
    return _no_such_key(flag)
  if "No such file or directory" in text:
    m = re.search(r"Attempted \[.*?\]:\s*(\S+)", text) or re.search(r"--config=([^:\s]+)", text)
    return f"config file {m.group(1) if m else '?'} not found"
  # The innermost "SomeError: message" line of an embedded traceback.
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception): ", l)]
  if errors:
    return errors[-1].split(": ", 1)[1]
  return lines[0] if lines else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with any error as one line and exit 2 (a misspelt
  config key, a missing config file, a bad config argument)."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.get("model")  # a config file that failed to load raises here
    return rest
  except Exception as e:  # pylint: disable=broad-except  (flag errors, and the config file's own)
    _fail(_flag_error_line(e, argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  from ebm_pretrain import peer_loss
  if _multi_process():
    if not peer_loss.is_supervised():
      sys.exit(peer_loss.supervise(sys.argv, _HEARTBEAT.value))  # see peer_loss.py
    peer_loss.die_with_supervisor()
  from ebm_pretrain import disk_full, errors, train, workdir
  from ebm_pretrain.data.sources import DataSourceError
  _init_distributed()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DataSourceError, errors.ConfigError, errors.CheckpointError,
          workdir.WorkdirError, errors.NoSpaceError) as e:
    _fail(str(e))  # a message that says what to do: no stack trace
  except OSError as e:
    if not disk_full.is_no_space(e):
      raise
    _fail(f"no space left on {e.filename or _WORKDIR.value}; free space, then rerun the same "
          "command: it resumes from the newest checkpoint")
  except (errors.NonFiniteLossError, errors.NonFiniteStateError) as e:
    _fail(str(e), EXIT_DIVERGED)
  except train.RunStopped:
    sys.exit(train.EXIT_STOPPED)  # the loop printed what happened
  except Exception as e:  # pylint: disable=broad-except
    if not (_multi_process() and peer_loss.is_collective_loss(e)):
      raise
    print("error: " + peer_loss.message(peer_loss.collective_peer(_NUM_PROCESSES.value,
                                                                  _PROCESS_ID.value),
                                        _WORKDIR.value, _NUM_PROCESSES.value),
          file=sys.stderr, flush=True)
    os._exit(peer_loss.EXIT_PEER_LOST)  # jax's exit handler would wait on the lost peer
  except KeyboardInterrupt:
    _fail("interrupted (Ctrl-C) before a checkpoint could be saved; rerun to resume from "
          "the newest one", EXIT_INTERRUPTED)


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
