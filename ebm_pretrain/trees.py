"""Pytree utilities: a key path as the "a/b/c" string configs and messages use, and
the finite checks the train step and checkpoints run."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


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


def _inexact(tree) -> list[tuple[Any, jax.Array]]:
  return [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value of ``tree`` is finite (traceable)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in _inexact(tree)] or
                           [jnp.asarray(True)]))


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point leaves of ``tree`` that hold NaN or inf."""
  leaves = _inexact(tree)
  ok = jax.device_get(_leaves_finite([x for _, x in leaves]))
  return [jax.tree_util.keystr(p, simple=True, separator="/")
          for (p, _), good in zip(leaves, ok) if not good]


@jax.jit
def _leaves_finite(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]
