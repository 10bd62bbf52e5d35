"""Config checks that run before anything is compiled: the generic ones (devices,
batch, dtypes, steps, optimizer, data, evaluators), the backbone traced once on
the configured image size, then the objective's own ``check``."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ebm_pretrain import evaluators, models, objectives
from ebm_pretrain.errors import fail


def validate(config, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError naming the first field that would fail late or deep in XLA."""
  _check_model(config)
  objectives.get_class(config.objective).check(config)
  if not isinstance(config.batch_size, int) or config.batch_size < 1:
    fail("batch_size", f"must be a positive int, got {config.batch_size!r}")
  if config.batch_size % num_devices:
    fail("batch_size", f"{config.batch_size} is not divisible by the number of devices "
         f"({num_devices})")
  accum = config.grad_accum_steps
  if not isinstance(accum, int) or accum < 1 or config.batch_size % (num_devices * accum):
    fail("grad_accum_steps", f"{accum!r}: batch_size ({config.batch_size}) must split into "
         f"grad_accum_steps micro-batches with an equal share on each of {num_devices} devices")
  if config.batch_size % process_count:
    fail("batch_size", f"{config.batch_size} is not divisible by the number of processes "
         f"({process_count})")
  if config.optim.name not in ("adamw", "lars"):
    fail("optim.name", f"{config.optim.name!r}; valid: adamw, lars")
  if not 0 < config.data.train_fraction <= 1:
    fail("data.train_fraction", f"must be in (0, 1], got {config.data.train_fraction}")
  for f in ("dtype", "param_dtype"):
    if config[f] not in objectives.base.DTYPES:
      fail(f, f"{config[f]!r}; valid: {', '.join(objectives.base.DTYPES)}")
  if len(config.data.mean) != config.data.channels or len(config.data.std) != config.data.channels:
    fail("data.mean", f"mean/std need {config.data.channels} values (data.channels)")
  if config.total_steps < 0 or config.total_epochs <= 0 and config.total_steps == 0:
    fail("total_steps", "set total_steps > 0 or total_epochs > 0")
  for f in ("log_every", "checkpoint_every", "image_every", "checkpoint_timeout_s"):
    if config[f] < 1:
      fail(f, f"must be >= 1, got {config[f]}")
  if not 0 <= config.ema_decay < 1:
    fail("ema_decay", f"must be in [0, 1) (0: no average), got {config.ema_decay}")
  if config.best_mode not in ("max", "min"):
    fail("best_mode", f"{config.best_mode!r}; valid: max, min")
  evaluators.check(config, num_devices)


def _check_model(config) -> None:
  """The backbone's own option checks, then one trace on the configured image size
  (shapes only), so that a variant, option or image size it cannot take fails
  here with its message."""
  m, d = config.model, config.data
  if m.name not in models.backbone_names():
    fail("model.name", f"unknown model {m.name!r}; valid: {', '.join(models.backbone_names())}")
  kwargs = {k: v for k, v in m.to_dict().items() if k not in ("name", "variant")}
  models.check_options(m.name, m.variant, d.image_size, **kwargs)
  images = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  try:
    backbone = models.get_backbone(m.name, m.variant, **kwargs)
    jax.eval_shape(backbone.init, jax.random.key(0), images)
  except (ValueError, TypeError) as e:
    fail("model", f"{m.name} {m.variant!r} at data.image_size={d.image_size}: {e}")
