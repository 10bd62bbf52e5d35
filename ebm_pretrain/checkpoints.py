"""Reading the trainer's Orbax checkpoints outside the trainer: find the newest
finalised step of a workdir, read its config, restore its parameters (only
those, on the host), and carry a pretrained backbone into a new model.

A checkpoint path may be a workdir (``config.json`` + ``checkpoints/``), its
``checkpoints`` folder, or one step folder inside it (``checkpoints/1000``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the model; the message says which."""


@dataclasses.dataclass(frozen=True)
class Found:
  checkpoints_dir: str
  step: int
  workdir: str | None  # holds config.json, when the layout is the trainer's


def find(path: str) -> Found:
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
  step = None
  if os.path.isdir(os.path.join(path, "checkpoints")):
    ckpt_dir = os.path.join(path, "checkpoints")
  elif re.fullmatch(r"\d+", os.path.basename(path)) and os.path.isdir(os.path.join(path, "state")):
    ckpt_dir, step = os.path.dirname(path), int(os.path.basename(path))
  else:
    ckpt_dir = path
  steps = ocp.utils.checkpoint_steps(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(
        f"no checkpoint at {path}: expected a workdir with a finalised checkpoint in "
        "checkpoints/, a checkpoints folder, or one step folder (checkpoints/N) of a run")
  parent = os.path.dirname(ckpt_dir)
  workdir = parent if os.path.isfile(os.path.join(parent, "config.json")) else None
  return Found(ckpt_dir, max(steps) if step is None else step, workdir)


def read_config(found: Found) -> ml_collections.ConfigDict:
  if found.workdir is None:
    raise CheckpointError(f"no config.json next to {found.checkpoints_dir}: cannot tell "
                          "which model the checkpoint holds")
  with open(os.path.join(found.workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


@contextlib.contextmanager
def _quiet():
  """Orbax warns, at length, about reading a run's folder read-only and about the
  data-iterator item it is not asked for; both are expected here."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def restore_state(found: Found, keys=("params",)) -> dict:
  """The ``keys`` entries of the saved train state, as host numpy arrays; the
  rest (optimizer state) is not read."""
  with _quiet(), ocp.CheckpointManager(
      found.checkpoints_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    meta = dict(mngr.item_metadata(found.step)["state"])
    item = {k: jax.tree.map(lambda m: np.zeros((), m.dtype), meta[k]) for k in keys if k in meta}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    out = mngr.restore(found.step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))
  return dict(out["state"])


def restore_params(found: Found) -> dict:
  return restore_state(found)["params"]


def backbone_of(params: dict) -> dict:
  """The backbone parameters of an energy (``model/backbone``) or a fine-tuned
  (``backbone``) checkpoint."""
  if "backbone" in params:
    return params["backbone"]
  if "model" in params and "backbone" in params["model"]:
    return params["model"]["backbone"]
  raise CheckpointError(f"the checkpoint holds no backbone parameters (top-level keys: "
                        f"{sorted(params)})")


# ----------------------------------------------------------------------------
# Carrying a backbone into a new model.
# ----------------------------------------------------------------------------
def interpolate_posemb(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[1, h*w, D] position embeddings of a square h x w grid -> [1, gh*gw, D],
  resized bicubically on the 2D grid (MAE's ``interpolate_pos_embed``)."""
  n, d = posemb.shape[1], posemb.shape[2]
  side = int(round(n ** 0.5))
  if side * side != n:
    raise CheckpointError(f"pos_embedding has {n} positions, not a square grid; cannot "
                          "interpolate it")
  if (side, side) == tuple(grid):
    return posemb
  x = jnp.asarray(posemb, jnp.float32).reshape(side, side, d)
  x = jax.image.resize(x, (grid[0], grid[1], d), method="bicubic")
  return np.asarray(x.reshape(1, grid[0] * grid[1], d), posemb.dtype)


def _flat(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Parameters a checkpoint may hold that the new model need not use: the cls
# token when fine-tuning switches from cls to global-average pooling.
UNUSED_OK = ("cls",)
# Parameters the new model may have that the checkpoint lacks, because their
# fresh initialisation is the meaningful one: fixed sin-cos position embeddings
# made trainable (posemb="sincos2d_learn", appendix A.2), or trainable ones from
# zeros for an encoder pretrained without any (posemb="zeros_learn", AE + sorting).
FRESH_OK = ("pos_embedding",)


def load_backbone(target: dict, loaded: dict, *, fresh_ok: tuple[str, ...] = (),
                  log=print) -> dict:
  """``target`` (freshly initialised backbone params) with every leaf replaced by
  the checkpoint's. Position embeddings of another grid are interpolated; any
  other mismatch raises CheckpointError listing every mismatched path."""
  want, have = _flat(target), _flat(loaded)
  missing = [k for k in want if k not in have and k.split("/")[-1] not in fresh_ok]
  unused = [k for k in have if k not in want]
  bad_unused = [k for k in unused if k.split("/")[-1] not in UNUSED_OK]
  out, shape_errors = {}, []
  for k, v in want.items():
    if k not in have:
      out[k] = v
      continue
    w = np.asarray(have[k])
    if k.split("/")[-1] == "pos_embedding" and w.shape != v.shape and w.ndim == 3 \
        and w.shape[-1] == v.shape[-1]:
      side = int(round(v.shape[1] ** 0.5))
      if side * side == v.shape[1]:
        log(f"Interpolating {k} from {w.shape[1]} to {v.shape[1]} positions")
        w = interpolate_posemb(w, (side, side))
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


def pretrained_backbone(config, target: dict, path: str, log=print) -> dict:
  """``target`` (fresh backbone params of ``config.model``) replaced by the backbone
  of the checkpoint at ``path``; a different model is a CheckpointError."""
  found = find(path)
  if found.workdir is not None:
    trained = read_config(found).model
    m = config.model
    if (trained.name, trained.variant) != (m.name, m.variant):
      raise CheckpointError(
          f"{path} holds a {trained.name} {trained.variant} backbone; this config builds "
          f"{m.name} {m.variant}. Set --config.model.name={trained.name} "
          f"--config.model.variant={trained.variant}, or point --config.init at a "
          f"{m.name} {m.variant} checkpoint.")
  fresh_ok = (FRESH_OK
              if config.model.get("posemb") in ("sincos2d_learn", "zeros_learn") else ())
  try:
    backbone = load_backbone(
        target, backbone_of(restore_params(found)),
        fresh_ok=fresh_ok, log=log)
  except CheckpointError as e:
    hint = ("\n(a checkpoint pretrained with fixed sin-cos position embeddings has no "
            "pos_embedding: fine-tune with --config.model.posemb=sincos2d_learn)"
            if "  pos_embedding" in str(e) or "/pos_embedding" in str(e) else "")
    raise CheckpointError(f"{path}: {e}{hint}") from None
  log(f"Initialised the backbone from {found.checkpoints_dir} step {found.step}")
  return backbone
