"""Shared test helpers: load configs, run the CLI, read checkpoints."""
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# The suite's programs are compiled with XLA's backend (LLVM) optimizations
# off: most of the suite's time is compiling tiny models, which those
# optimizations lengthen and barely speed up, while every test compares results
# computed under the same flags (or against a tolerance). The code users run is
# compiled at XLA's default level; tests/test_xla_flags.py checks the compiler
# there (``cli_env(optimized=True)``). Measured: docs/performance.md.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def cli_env(num_devices: int = 1, optimized: bool = False, **extra) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}" + (
      "" if optimized else f" {SUITE_XLA_FLAGS}")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


def main_cmd(config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "ebm_pretrain.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def run_main(config: str, workdir: str, *overrides: str, num_devices: int = 1,
             check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
  proc = subprocess.run(main_cmd(config, workdir, *overrides), cwd=ROOT, env=cli_env(num_devices),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
  return proc


def write_idx(path, array) -> None:
  """A gzipped IDX file (Fashion-MNIST's format) of a uint8 array."""
  import gzip
  import struct
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fake_idx_dir(idx, n_train=300, n_test=50):
  """A folder of the four Fashion-MNIST IDX files, random images: what tests read
  instead of Debian's dataset-fashion-mnist."""
  idx.mkdir()
  rng = np.random.default_rng(0)
  for name, arr in [("train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28))),
                    ("train-labels-idx1-ubyte.gz", np.arange(n_train) % 10),
                    ("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28))),
                    ("t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)]:
    write_idx(str(idx / name), arr)
  return idx


def free_port() -> int:
  """A local TCP port nobody listens on (for a coordinator_address)."""
  import socket
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def latest_params(workdir: str):
  """Raw (unsharded numpy) train state of the newest finalised checkpoint."""
  ckpt = os.path.join(workdir, "checkpoints")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.CheckpointManager(ckpt, item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
    step = mngr.latest_step()
    meta = mngr.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return step, jax.tree.map(np.asarray, restored["state"])


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def train_inprocess(config: str, workdir: str, **overrides):
  """``train.train_and_evaluate`` of ``configs/NAME.py[:arg]`` with ``overrides``
  ({"a.b": value}) in this process, on one device: no interpreter start, no JAX
  import, and the programs a one-device CLI run compiles (an 8-device SPMD
  program compiles and runs several times slower on 2 cores). Returns (state,
  last metrics)."""
  from ebm_pretrain import train
  name, _, arg = config.partition(":")
  c = load_config(name, arg or None)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return train.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
