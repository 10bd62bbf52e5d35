"""Flax <-> torch layouts for the timm mappings (``*_timm.py``): a Dense kernel
[in, out] is a torch Linear weight [out, in]; a Conv kernel [kh, kw, in, out] a
Conv2d weight [out, in, kh, kw]; LayerNorm ``scale`` is ``weight``. Numpy only."""
from __future__ import annotations

import numpy as np

from ebm_pretrain.errors import CheckpointError


def conv(kernel) -> np.ndarray:
  return np.asarray(kernel).transpose(3, 2, 0, 1)


def unconv(weight) -> np.ndarray:
  return np.asarray(weight).transpose(2, 3, 1, 0)


def put(sd: dict, prefix: str, layer: dict, kind: str) -> None:
  """``sd[prefix.weight/bias]`` from a Flax ``layer`` of ``kind`` dense | conv | norm."""
  weight = {"dense": lambda p: np.asarray(p["kernel"]).T, "conv": lambda p: conv(p["kernel"]),
            "norm": lambda p: np.asarray(p["scale"])}[kind](layer)
  sd[f"{prefix}.weight"] = weight
  if "bias" in layer:
    sd[f"{prefix}.bias"] = np.asarray(layer["bias"])


class State:
  """A timm state dict read back into Flax layers; a missing key is a
  CheckpointError naming it and the architecture."""

  def __init__(self, sd: dict, what: str):
    self.sd, self.what = sd, what

  def __contains__(self, key: str) -> bool:
    return key in self.sd

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.sd:
      raise CheckpointError(f"the timm state dict has no {key!r} (a {self.what} needs it; it "
                            f"has {len(self.sd)} entries, e.g. {sorted(self.sd)[:3]})")
    return np.asarray(self.sd[key], np.float32)

  def layer(self, prefix: str, kind: str) -> dict:
    """The Flax params of a dense | conv | norm layer at ``prefix``."""
    w = self[f"{prefix}.weight"]
    out = {"dense": lambda: {"kernel": w.T}, "conv": lambda: {"kernel": unconv(w)},
           "norm": lambda: {"scale": w}}[kind]()
    if f"{prefix}.bias" in self.sd:
      out["bias"] = self[f"{prefix}.bias"]
    return out


def finish(sd: dict) -> dict[str, np.ndarray]:
  return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
