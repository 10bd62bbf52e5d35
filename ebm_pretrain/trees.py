"""Parameter paths: a pytree key path as the "a/b/c" string configs and messages use."""
from __future__ import annotations

from typing import Any

import jax


def path_str(path) -> str:
  """A pytree key path as 'a/b/c'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def flat(tree) -> dict[str, Any]:
  """{'a/b/c': leaf} of a pytree."""
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def dotted(d: dict, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': value} of nested dicts (a config as JSON); lists stay values."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(dotted(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
