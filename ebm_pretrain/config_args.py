"""Parsing what the command line gives a config: the ``get_config(arg)`` argument
(``configs/vit_b.py:task=sr16,variant=S/16``) and ``a.b=v`` overrides (the
benchmark's ``--variant``), values typed after the defaults they replace."""
from __future__ import annotations

import ml_collections

from ebm_pretrain.errors import ConfigError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"task=sr16,variant=S/16"`` -> ConfigDict, typed after ``defaults``."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r}: expected KEY=VALUE with KEY in "
                        f"{sorted(defaults)}")
    out[key] = typed_like(defaults[key], value)
  return out


def typed_like(default, value: str):
  """The string ``value`` as the type of ``default`` (bool, int, float or str)."""
  if isinstance(default, bool):
    return value.lower() in ("1", "true", "yes")
  if isinstance(default, (int, float)):
    return type(default)(value)
  return value


def override(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``"a.b=v,c=w"`` applied, values typed after the
  current ones (the benchmark's ``--variant``)."""
  out = config.copy_and_resolve_references()
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = out
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not sep or not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f"override {item!r}: expected KEY=VALUE with KEY a field of the config")
    node[leaf] = typed_like(node[leaf], value)
  return out
