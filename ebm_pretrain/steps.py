"""Step arithmetic: how long a run is, and whether step s is an every-N step."""
from __future__ import annotations

import math


def total_steps_of(config, num_examples: int) -> tuple[int, float]:
  """(total steps, steps per epoch): ``total_steps`` if > 0, else ``total_epochs``."""
  steps_per_epoch = num_examples / config.batch_size
  if config.total_steps > 0:
    return int(config.total_steps), steps_per_epoch
  return int(math.ceil(config.total_epochs * steps_per_epoch)), steps_per_epoch


def itstime(step: int, every: int, total_steps: int, *, last: bool = True) -> bool:
  """Whether ``step`` is a multiple of ``every`` (0: never), or the last step when
  ``last`` (a run always logs, draws and saves its final step)."""
  return (every > 0 and step % every == 0) or (last and step == total_steps)
