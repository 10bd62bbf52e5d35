"""Entry point: ``python -m ebm_pretrain.main --config=configs/vit_b.py --workdir=DIR``.

Parses flags, sets up multi-process JAX when asked, and calls the trainer.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and images go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM, "
    "or the --coordinator_address/--num_processes/--process_id flags).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

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
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  from ebm_pretrain import checkpoints, config_lib, train
  from ebm_pretrain.data.sources import DataSourceError
  _init_distributed()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DataSourceError, config_lib.ConfigError, checkpoints.CheckpointError,
          train.NonFiniteLossError) as e:
    # Errors with a message that says what to do: no stack trace.
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
