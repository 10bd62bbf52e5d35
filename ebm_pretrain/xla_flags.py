"""The XLA flags every process of the package starts with, and the check of the
installed jaxlib against the versions known to compute wrong results.

jaxlib 0.10.2 (the pinned version) and 0.11.0 hand some fusions on the CPU to
YNNPACK ("YNN fusions"), which returns wrong sums for a vmapped matrix-vector
product followed by a reduction (upstream jax-ml/jax#39103) and crashes or
hangs on some broadcast-multiply-reduce programs (#39257, #40412). Nothing in
a run's numbers would show it, so on those versions the package turns YNN
fusions off (``--xla_cpu_experimental_ynn_fusion_type=``); why off rather than
only without reductions: docs/performance.md, "XLA flags on the CPU".
``tests/test_xla_flags.py`` runs the upstream reproducer as a canary.

:func:`apply` runs when ``ebm_pretrain`` is imported, before any backend
starts. A user's own ``XLA_FLAGS`` are kept; one that sets the YNN flag itself
wins, and ``EBM_PRETRAIN_JAX_DEFAULT_FLAGS=1`` leaves jax's defaults alone.
"""
from __future__ import annotations

import importlib.metadata
import os
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
TESTED_JAXLIB = "0.10.2"  # the version pyproject.toml pins
# jaxlib versions whose YNN fusions compute wrong results or crash on the CPU
# (the upstream issues above); the flag exists in each of them. An unknown flag
# in XLA_FLAGS aborts the process, so it is set only where it is known to exist.
KNOWN_BAD = ("0.10.2", "0.11.0")
OPT_OUT = "EBM_PRETRAIN_JAX_DEFAULT_FLAGS"


def jaxlib_version() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def flags_for(version: str | None, user_flags: str, opt_out: bool = False) -> str:
  """``XLA_FLAGS`` as the package runs with them: the user's, plus YNN fusions
  off on a known-bad jaxlib unless the user set that flag or opted out."""
  if opt_out or version not in KNOWN_BAD or YNN_FLAG in user_flags:
    return user_flags
  return f"{user_flags} {YNN_FLAG}=".strip()


def version_warning(version: str | None) -> str | None:
  """A warning when the installed jaxlib is not the tested one."""
  if version is None or version == TESTED_JAXLIB:
    return None
  known = ", ".join(KNOWN_BAD)
  if version in KNOWN_BAD:
    return (f"jaxlib {version} is not the tested {TESTED_JAXLIB}; it is one of the versions "
            f"({known}) whose CPU YNN fusions compute wrong results, which ebm_pretrain turns off")
  return (f"jaxlib {version} is not the tested {TESTED_JAXLIB}. Known to compute wrong results "
          f"on the CPU: {known} (YNN fusions; turned off there). Whether {version} is affected "
          "is untested: run `python -m pytest tests/test_xla_flags.py` before trusting a CPU run")


def _backends_started() -> bool:
  import sys
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and getattr(bridge, "_backends", None))


def apply() -> None:
  """Sets ``XLA_FLAGS`` for this process (and the processes it starts)."""
  version = jaxlib_version()
  user = os.environ.get("XLA_FLAGS", "")
  wanted = flags_for(version, user, opt_out=os.environ.get(OPT_OUT) == "1")
  if wanted != user:
    if _backends_started():
      warnings.warn(f"jax's backends started before ebm_pretrain was imported: {YNN_FLAG}= "
                    f"could not be set, and jaxlib {version}'s CPU YNN fusions compute some "
                    "programs wrong. Import ebm_pretrain first, or set it in XLA_FLAGS",
                    RuntimeWarning, stacklevel=3)
    os.environ["XLA_FLAGS"] = wanted
  message = version_warning(version)
  if message:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
