"""The one translation from the command line's short task names to
``(config.objective, config.task)``.

``config.objective`` names the objective and ``config.task`` is only ever a
corruption spec (``ebm_pretrain/corruptions.py``; empty for objectives that do
not corrupt pixels). The configs' ``:task=`` argument also accepts the names
the objectives were once picked by, and checkpoints written before
``config.objective`` named every objective say ``objective: energy`` with one
of them; both go through :func:`split`.
"""
from __future__ import annotations

AE_PREFIX = "ae_"

# Short name -> (objective, task).
_SHORT = {"sorting": ("sorting", ""), "ae_sorting": ("ae_sorting", ""), "mae": ("mae", "")}
CONTRASTIVE_PREFIX = "contrastive_"  # contrastive_<task>: objective contrastive (N = 0)


def split(task: str, objective: str = "energy") -> tuple[str, str]:
  """``(objective, task)`` for a ``:task=`` argument or an old checkpoint's config:
  ``sorting`` -> (sorting, ""), ``ae_sr4`` -> (autoencoder, sr4), ``mae`` ->
  (mae, ""), ``contrastive_mixed`` -> (contrastive, mixed); anything else is already a corruption spec of ``objective``."""
  if objective != "energy":
    return objective, task
  if task in _SHORT:
    return _SHORT[task]
  if task.startswith(AE_PREFIX):
    return "autoencoder", task[len(AE_PREFIX):]
  if task.startswith(CONTRASTIVE_PREFIX):
    return "contrastive", task[len(CONTRASTIVE_PREFIX):]
  return objective, task


def upgrade(config) -> None:
  """Rewrites, in place, an old config's ``objective: energy, task: sorting`` (or
  ``ae_*`` / ``mae``) as today's ``objective`` and ``task``."""
  if "objective" in config and "task" in config:
    objective, task = split(config["task"], config["objective"])
    if (objective, task) != (config["objective"], config["task"]):
      config["objective"], config["task"] = objective, task
