import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole suite, shared by both xdist
# workers and every CLI process they start (they inherit the environment): most
# tests compile the same tiny models, and a run from the cache skips most of its
# start-up (README, "Tests"). Entries are keyed by the program, the flags and the
# devices, so a hit runs the same executable a compile would produce. (Set
# before jax is imported: jax reads these when it is.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "ebm_pretrain_tests_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

from helpers import SUITE_XLA_FLAGS  # noqa: E402

# 8 fake devices unless the caller chose otherwise, and the suite's compiler
# flags (helpers.SUITE_XLA_FLAGS); XLA reads them when the backend starts.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {SUITE_XLA_FLAGS}")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pretrain(tmp_path_factory):
  """One 2-step tiny ViT pretraining (configs/tiny.py), shared by the tests that
  only read its checkpoint (one per xdist worker)."""
  from helpers import train_inprocess
  wd = str(tmp_path_factory.mktemp("tiny_pretrain") / "wd")
  train_inprocess("tiny", wd, total_steps=2, eval_examples=0)
  return wd
