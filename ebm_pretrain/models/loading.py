"""Carrying parameters of one backbone into another of the same family: the
generic leaf-by-leaf match that a family's ``load`` hook calls after its own
surgery (ViT: position-embedding resampling, the cls token)."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from ebm_pretrain.errors import CheckpointError
from ebm_pretrain.trees import flat


def match(target: dict, loaded: dict, *, unused_ok: tuple[str, ...] = (),
          fresh_ok: tuple[str, ...] = (),
          adapt: Callable[[str, np.ndarray, tuple], np.ndarray] | None = None,
          log=print) -> dict:
  """``target`` (freshly initialised params) with every leaf replaced by the
  loaded one of the same path. ``adapt(path, loaded, target_shape)`` may reshape a
  leaf first; leaves named in ``fresh_ok`` may be missing from ``loaded`` (their
  fresh value stays), those in ``unused_ok`` may be left over. Anything else
  raises CheckpointError listing every mismatched path."""
  want, have = flat(target), flat(loaded)
  missing = [k for k in want if k not in have and k.split("/")[-1] not in fresh_ok]
  unused = [k for k in have if k not in want]
  bad_unused = [k for k in unused if k.split("/")[-1] not in unused_ok]
  out, shape_errors = {}, []
  for k, v in want.items():
    if k not in have:
      out[k] = v
      continue
    w = np.asarray(have[k])
    if adapt is not None and w.shape != tuple(v.shape):
      w = adapt(k, w, tuple(v.shape))
    if w.shape != tuple(v.shape):
      shape_errors.append(f"  {k}: checkpoint {w.shape}, model {tuple(v.shape)}")
      continue
    out[k] = w.astype(v.dtype)
  if missing or bad_unused or shape_errors:
    lines = ["the checkpoint does not fit the model:"]
    if shape_errors:
      lines += ["shape mismatches:"] + shape_errors
    if missing:
      lines += ["in the model, not in the checkpoint:"] + [f"  {k}" for k in missing]
    if bad_unused:
      lines += ["in the checkpoint, not in the model:"] + [f"  {k}" for k in bad_unused]
    raise CheckpointError("\n".join(lines))
  for k in unused:
    log(f"Not used from the checkpoint: {k}")
  treedef = jax.tree_util.tree_structure(target)
  return jax.tree_util.tree_unflatten(treedef, [out[k] for k in want])
