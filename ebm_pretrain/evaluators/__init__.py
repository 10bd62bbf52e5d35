"""Evaluators as plug-ins (big_vision's ``config.evals``): the trainer runs every
entry of ``config.evals = {name: dict(type=..., every=..., examples=..., ...)}``;
an empty ``config.evals`` means the objective's ``default_evals`` (energy:
``psnr``, sorting: ``sorting``, the autoencoders: ``loss``, supervised:
``top1``, segmentation: ``miou``). Unset ``every`` / ``examples`` / ``batch_size`` / ``split`` take
``config.eval_every`` / ``eval_examples`` / ``eval_batch_size`` /
``data.eval_split``; an entry with ``examples == 0`` does not run. Metrics are
named ``<prefix>/<metric>`` (prefix ``eval``).

One file per type, the class registered below (or with ``register`` from your
own file: docs/extending.md).
"""
from __future__ import annotations

from ebm_pretrain import objectives
from ebm_pretrain.errors import fail
from ebm_pretrain.evaluators.common import Context, Evaluator
from ebm_pretrain.registry import Registry

_REGISTRY = Registry("evals.*.type", {
    "psnr": "ebm_pretrain.evaluators.psnr:PSNR",
    "sorting": "ebm_pretrain.evaluators.sorting:Sorting",
    "top1": "ebm_pretrain.evaluators.top1:Top1",
    "loss": "ebm_pretrain.evaluators.loss:Loss",
    "knn": "ebm_pretrain.evaluators.knn:KNN",
    "linear_probe": "ebm_pretrain.evaluators.linear_probe:LinearProbe",
    "miou": "ebm_pretrain.evaluators.miou:MIoU",
})


def register(name: str, cls) -> None:
  """Makes ``config.evals.x = dict(type=name)`` build ``cls``."""
  _REGISTRY.register(name, cls)


def get_class(name: str, field: str | None = None):
  return _REGISTRY.get(name, field)


def specs(config) -> dict[str, dict]:
  """{name: full settings} of the evaluators this config runs."""
  entries = config.evals.to_dict() or objectives.get_class(config.objective).default_evals()
  out = {}
  for name, entry in entries.items():
    spec = dict(every=config.eval_every, examples=config.eval_examples,
                batch_size=config.eval_batch_size, split=config.data.eval_split, prefix="eval")
    spec.update(entry)
    if spec["examples"] != 0:
      out[name] = spec
  return out


def check(config, num_devices: int) -> None:
  """ConfigError for an entry of an unknown type, with options its type does not
  take, or that cannot work with this objective or these devices."""
  objective_cls = objectives.get_class(config.objective)
  for name, spec in specs(config).items():
    kind = spec.get("type")
    cls = get_class(kind, f"evals.{name}.type")
    unknown = set(spec) - {"type", "every", "examples", "batch_size", "split", "prefix",
                           *cls.options}
    if unknown:
      fail(f"evals.{name}", f"{sorted(unknown)}: {kind} takes "
           f"{', '.join(sorted(cls.options)) or 'no options'} besides every, examples, "
           "batch_size, split, prefix")
    problem = cls.check(config, objective_cls, spec)
    if problem:
      fail(f"evals.{name}", f"{kind} {problem}")
    if spec["batch_size"] % num_devices:
      fail(f"evals.{name}.batch_size" if "batch_size" in config.evals.get(name, {})
           else "eval_batch_size", f"{spec['batch_size']} is not divisible by the number of "
           f"devices ({num_devices})")
    if not isinstance(spec["every"], int) or spec["every"] < 0:
      fail(f"evals.{name}.every", f"must be an int >= 0 (0: at the end), got {spec['every']!r}")


def build(config, objective, ctx: Context) -> list[Evaluator]:
  return [get_class(spec["type"])(name, spec, config, objective, ctx)
          for name, spec in specs(config).items()]


__all__ = ["Context", "Evaluator", "build", "check", "get_class", "register", "specs"]
