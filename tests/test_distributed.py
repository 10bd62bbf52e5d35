"""Multi-host: 2 processes x 4 CPU devices (jax.distributed, gloo collectives)
train exactly as 1 process x 8 devices, each reading only its own shard."""
import os
import subprocess

import numpy as np

from ebm_pretrain.data import pipeline, sources
from helpers import ROOT, assert_trees_close, cli_env, free_port, latest_params, main_cmd, run_main

OVERRIDES = ("--config.total_steps=2", "--config.eval_examples=0", "--config.image_every=100")


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  single = str(tmp_path / "single")
  run_main("configs/tiny.py", single, *OVERRIDES, num_devices=8)

  multi = str(tmp_path / "multi")
  port = free_port()
  procs = [subprocess.Popen(
      main_cmd("configs/tiny.py", multi, *OVERRIDES, f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=cli_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"{out}\n{err[-4000:]}"
  assert "Done: step 2" in outs[0][0] and "Done: step 2" not in outs[1][0]  # process 0 reports
  # Each process checkpointed its own data-iterator state.
  data_dir = os.path.join(multi, "checkpoints", "2", "data")
  assert sorted(f for f in os.listdir(data_dir) if f.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  _, s_state = latest_params(single)
  _, m_state = latest_params(multi)
  assert_trees_close(m_state["params"], s_state["params"], rtol=2e-5, atol=1e-5)


class RecordingSource:
  def __init__(self, source):
    self.source, self.read = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.source[i]


def test_each_process_reads_only_its_shard_and_batches_match_one_process():
  base = sources.SyntheticSource(40, 16, 3)
  kw = dict(global_batch=8, num_batches=6, image_size=16, channels=3, seed=3)
  whole = RecordingSource(base)
  one = list(pipeline.make_train_dataset(whole, **kw))
  parts = [RecordingSource(base) for _ in range(2)]
  two = [list(pipeline.make_train_dataset(parts[p], process_index=p, process_count=2, **kw))
         for p in range(2)]
  for j in range(6):
    for key in ("image", "label"):
      np.testing.assert_array_equal(one[j][key], np.concatenate([two[0][j][key], two[1][j][key]]))
  # Process p read exactly the records of its half of every global batch.
  assert len(parts[0].read) == len(parts[1].read) == 6 * 4
  # Together they read exactly the single process's records, each its own half
  # (as multisets: grain reads ahead, in any order).
  assert sorted(parts[0].read + parts[1].read) == sorted(whole.read)
  for p in range(2):
    own = np.concatenate([b["label"] for b in two[p]])
    assert sorted(base[i]["label"] for i in parts[p].read) == sorted(own.tolist())
    halves = np.concatenate([one[j]["label"][4 * p:4 * p + 4] for j in range(6)])
    np.testing.assert_array_equal(own, halves)
