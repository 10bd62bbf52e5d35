"""The XLA flags the package sets (ebm_pretrain/xla_flags.py): the canary for
jax-ml/jax#39103 (jaxlib 0.10.2 computes a vmapped matrix-vector product
followed by a reduction wrong on the CPU under its YNN fusions) must give the
eager result under the package's defaults, in a fresh process as every entry
point starts; a user's own XLA_FLAGS are kept."""
import subprocess
import sys

import pytest

from ebm_pretrain import xla_flags
from helpers import ROOT, cli_env

# The upstream reproducer (float64 at 16385 rows, float32 at 32769): the last
# row's value, jitted and op by op.
CANARY = """
import ebm_pretrain  # the package's defaults, as `python -m ebm_pretrain.X` gets them
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
for dtype, n in ((jnp.float64, 16_385), (jnp.float32, 32_769)):
  i = jnp.arange(n, dtype=dtype)
  x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)
  matrix = jnp.eye(3, dtype=dtype)
  f = lambda x: jax.vmap(lambda row: jnp.sum((matrix @ row) ** 2))(x)
  print(dtype.__name__, float(f(x)[-1]), float(jax.jit(f)(x)[-1]))
"""


def run_canary(**env) -> list[tuple[str, float, float]]:
  proc = subprocess.run([sys.executable, "-c", CANARY], cwd=ROOT, env=cli_env(1, optimized=True, **env),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [(name, float(eager), float(jit))
          for name, eager, jit in (l.split() for l in proc.stdout.strip().splitlines())]


def test_the_canary_computes_the_eager_result_under_the_package_defaults():
  for name, eager, jit in run_canary():
    n = 16_385 if name == "float64" else 32_769
    assert eager == (n - 1) ** 2, (name, eager)
    assert jit == eager, f"{name}: jit {jit} != eager {eager}: XLA miscompiles on this CPU"


@pytest.mark.skipif(xla_flags.jaxlib_version() not in xla_flags.KNOWN_BAD,
                    reason="the installed jaxlib is not one known to miscompile")
def test_the_canary_catches_the_miscompile_under_jax_defaults():
  """Why the flag is set: with jax's own flags (the package's opted out) the
  same program's jit result is wrong on jaxlib 0.10.2 (upstream, also seen on
  other x86-64 CPUs, with other wrong values)."""
  results = run_canary(**{xla_flags.OPT_OUT: "1"})
  assert any(jit != eager for _, eager, jit in results), results


@pytest.mark.parametrize("version,user,expected", [
    ("0.10.2", "", "--xla_cpu_experimental_ynn_fusion_type="),
    ("0.10.2", "--xla_force_host_platform_device_count=8",
     "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type="),
    # The user's own choice of the flag wins.
    ("0.10.2", "--xla_cpu_experimental_ynn_fusion_type=-reduce",
     "--xla_cpu_experimental_ynn_fusion_type=-reduce"),
    ("0.11.0", "", "--xla_cpu_experimental_ynn_fusion_type="),
    # A jaxlib not known to have the flag gets none (an unknown flag aborts XLA).
    ("0.10.1", "--a", "--a"),
    (None, "", ""),
])
def test_flags_keep_the_users_own(version, user, expected):
  assert xla_flags.flags_for(version, user) == expected


def test_opting_out_keeps_jax_defaults():
  assert xla_flags.flags_for("0.10.2", "--a", opt_out=True) == "--a"


def test_another_jaxlib_is_named_with_the_known_bad_versions():
  assert xla_flags.version_warning(xla_flags.TESTED_JAXLIB) is None
  msg = xla_flags.version_warning("0.12.0")
  assert "0.12.0 is not the tested 0.10.2" in msg and "0.10.2, 0.11.0" in msg
  assert "tests/test_xla_flags.py" in msg
  assert "whose CPU YNN fusions compute wrong results" in xla_flags.version_warning("0.11.0")


def test_the_package_sets_the_flag_in_its_processes():
  """Every entry point imports the package first: the flag is in force there
  (and in the processes it starts, which inherit the environment)."""
  code = "import os, ebm_pretrain; print(os.environ['XLA_FLAGS'])"
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(1, optimized=True),
                        capture_output=True, text=True, timeout=120)
  assert proc.stdout.split() == ["--xla_force_host_platform_device_count=1",
                                 "--xla_cpu_experimental_ynn_fusion_type="]
