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

# The files whose end-to-end runs (several CLI processes, multi-process runs,
# segmentation) take longest, longest first. xdist hands out whole files in
# collection order (pyproject.toml: --no-loadscope-reorder; its default order is
# by number of tests, which put the one-test, multi-process files last): started
# first, none of them is left running alone on one worker at the end.
LONGEST_FIRST = ("test_resume.py", "test_peer_loss.py", "test_finetune.py",
                 "test_backbones.py", "test_segmentation.py", "test_study.py",
                 "test_distributed.py", "test_timm.py", "test_failures.py",
                 "test_disk_full.py", "test_baselines.py", "test_train.py",
                 "test_benchmark.py", "test_data.py", "test_sorting.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def tiny_pretrain(tmp_path_factory):
  """One 2-step tiny ViT pretraining (configs/tiny.py), shared by the tests that
  only read its checkpoint (one per xdist worker)."""
  from helpers import train_inprocess
  wd = str(tmp_path_factory.mktemp("tiny_pretrain") / "wd")
  train_inprocess("tiny", wd, total_steps=2, eval_examples=0)
  return wd
