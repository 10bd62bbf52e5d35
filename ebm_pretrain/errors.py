"""The errors a run reports as one line (``main``: exit 2 for bad input, 3 for a
diverged run). Raised anywhere; caught only by the entry points."""
from __future__ import annotations


class ConfigError(ValueError):
  """An invalid config; the message names the field."""


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the model; the message says which."""


class NoSpaceError(RuntimeError):
  """A write (checkpoint, metrics, TensorBoard, image, study cell) found no space;
  the message names the step and the intact checkpoints (``disk_full.message``)."""


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or inf; nothing after the newest checkpoint is saved."""


class NonFiniteStateError(FloatingPointError):
  """The train state to be saved holds NaN or inf: it is not saved."""


def fail(field: str, msg: str):
  """Raises the ConfigError for ``config.<field>``."""
  raise ConfigError(f"config.{field}: {msg}")
