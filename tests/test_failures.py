"""Runs that cannot be lost (README, "Failure handling"): cloud workdirs, no
non-finite checkpoint ever written, fallback past an unreadable checkpoint, one
run per workdir, a resumed run with its own config, stall warnings, and bad
input as one line with exit 2. Most run in-process on configs/tiny.py."""
import glob
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ebm_pretrain import checkpoints, errors, fs, metrics, pretrained, train, train_checkpoints
from ebm_pretrain import workdir as workdir_lib
from ebm_pretrain.data import sources
from fake_gcs import fake_gcs
from helpers import ROOT, assert_trees_close, cli_env, fake_idx_dir, latest_params, load_config

ONE_DEVICE = dict(devices=jax.devices()[:1])


def _tiny(steps=4, **overrides):
  c = load_config("tiny", f"steps={steps}")
  c.eval_examples = 0
  c.image_every = 1000
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


# ----------------------------------------------------------------------------
# 1. gs:// workdirs.
# ----------------------------------------------------------------------------
def test_cloud_workdir_writes_and_resumes_through_the_path_layer(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # anything written "locally" would land here
  c = _tiny(image_every=2)
  with fake_gcs(str(tmp_path / "bucket_root")) as root:
    train.train_and_evaluate(c, "gs://bucket/run1", **ONE_DEVICE)
    run = os.path.join(root, "bucket", "run1")
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4"]
    records = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [2, 4]
    assert json.load(open(os.path.join(run, "config.json")))["total_steps"] == 4
    assert glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
    assert sorted(os.listdir(os.path.join(run, "images"))) == [
        "restoration_00000002.png", "restoration_00000004.png"]
    assert not os.path.exists(os.path.join(run, workdir_lib.LOCK_FILE))  # released
    capsys.readouterr()
    # A rerun resumes from the bucket; a longer one (an allowed change) continues.
    c2 = _tiny(steps=6, allow_config_change=True)
    train.train_and_evaluate(c2, "gs://bucket/run1", **ONE_DEVICE)
    assert "Resuming from checkpoint step 4 in gs://bucket/run1/checkpoints" in capsys.readouterr().out
    records = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [2, 4, 6]
    model = pretrained.load("gs://bucket/run1")
    assert model.step == 6 and model.features(np.zeros((1, 16, 16, 3), np.uint8)).shape[0] == 1
  assert os.listdir(tmp_path) == ["bucket_root"]  # nothing under ./gs:/...


def test_append_file_rewrites_cloud_objects_whole(tmp_path):
  with fake_gcs(str(tmp_path)) as root:
    f = fs.AppendFile("gs://b/log.txt", min_interval_s=3600)
    f.write("a\n")
    f.flush()  # throttled: nothing yet
    assert not os.path.exists(os.path.join(root, "b", "log.txt"))
    f.flush(force=True)
    f.write("b\n")
    f.close()
    assert open(os.path.join(root, "b", "log.txt")).read() == "a\nb\n"
    g = fs.AppendFile("gs://b/log.txt")  # reopened: appends to what is there
    g.write("c\n")
    g.close()
    assert open(os.path.join(root, "b", "log.txt")).read() == "a\nb\nc\n"


# ----------------------------------------------------------------------------
# 2. No non-finite checkpoint.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["checkpoint_step", "last_step"])
def test_nonfinite_update_is_never_checkpointed(tmp_path, where):
  wd = str(tmp_path / "wd")
  train.train_and_evaluate(_tiny(checkpoint_every=2), wd, **ONE_DEVICE)
  # Update 5 overflows every parameter (the loss of step 5, computed before it, is
  # finite): on a checkpoint step, or on the run's last step.
  bad = _tiny(steps=8 if where == "checkpoint_step" else 5, allow_config_change=True,
              checkpoint_every=1 if where == "checkpoint_step" else 100)
  bad.optim.base_lr = 1e39
  with pytest.raises(errors.NonFiniteStateError,
                     match="train state at step 5 is not finite .* not saved. The newest "
                           "checkpoint, step 4, is intact and finite"):
    train.train_and_evaluate(bad, wd, **ONE_DEVICE)
  step, state = latest_params(wd)
  assert step == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------
# 3. An unreadable newest checkpoint.
# ----------------------------------------------------------------------------
def _break_step(wd, step):
  for f in glob.glob(os.path.join(wd, "checkpoints", str(step), "state", "ocdbt.process_*", "d", "*")):
    with open(f, "r+b") as fh:
      fh.truncate(10)


def test_unreadable_newest_checkpoint_falls_back_and_is_kept(tmp_path, capsys):
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "wd")
  train.train_and_evaluate(_tiny(checkpoint_every=2), ref, **ONE_DEVICE)
  train.train_and_evaluate(_tiny(checkpoint_every=2), wd, **ONE_DEVICE)
  _break_step(wd, 4)
  capsys.readouterr()
  # Reading a model falls back too; naming the broken step is an error, not a traceback.
  assert pretrained.load(wd).step == 2
  assert "Skipped unreadable checkpoints" in capsys.readouterr().out
  with pytest.raises(checkpoints.CheckpointError, match="cannot read the checkpoint .*step 4"):
    pretrained.load(os.path.join(wd, "checkpoints", "4"))
  # The trainer resumes from step 2, sets step 4 aside (not deleted) and redoes it.
  train.train_and_evaluate(_tiny(checkpoint_every=2), wd, **ONE_DEVICE)
  out = capsys.readouterr().out
  assert "Checkpoint step 4 is unreadable" in out and "Resuming from checkpoint step 2" in out
  assert os.path.isdir(os.path.join(wd, checkpoints.UNREADABLE_DIR, "4", "state"))
  assert_trees_close(latest_params(wd)[1], latest_params(ref)[1], rtol=1e-6, atol=1e-7)


def test_no_readable_checkpoint_is_an_error_that_moves_nothing(tmp_path):
  wd = str(tmp_path / "wd")
  train.train_and_evaluate(_tiny(checkpoint_every=2), wd, **ONE_DEVICE)
  _break_step(wd, 2)
  _break_step(wd, 4)
  with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint .*step 4.*step 2"):
    train.train_and_evaluate(_tiny(checkpoint_every=2), wd, **ONE_DEVICE)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  assert not os.path.exists(os.path.join(wd, checkpoints.UNREADABLE_DIR))


def _save_while_paused(root, timeout_s: int, pause_s: float):
  """Saves steps 0, 1, 2 asynchronously; this process is stopped (SIGSTOP, as a
  suspended job is) for ``pause_s`` while step 1 is being written."""
  import grain
  import jax.numpy as jnp
  it = iter(grain.MapDataset.range(8).to_iter_dataset())
  state = {"w": jnp.ones((64, 1024, 1024), jnp.float32)}  # 256 MB: writing outlasts the kill's arrival
  ckpts = train_checkpoints.TrainCheckpoints(str(root), keep=3, timeout_s=timeout_s)
  try:
    ckpts.save(0, state, it, finite=True)
    ckpts.wait()
    ckpts.save(1, state, it, finite=True)
    subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep {pause_s}; "
                      f"kill -CONT {os.getpid()}"])
    time.sleep(pause_s + 1)
    ckpts.save(2, state, it, finite=True)
  finally:
    ckpts.close()
  return sorted(os.listdir(os.path.join(root, "checkpoints")))


def test_a_pause_mid_write_is_survived_up_to_the_checkpoint_timeout(tmp_path):
  # Orbax's own limit is 10 minutes of wall time, paused or not; ours is config.checkpoint_timeout_s.
  assert _save_while_paused(tmp_path / "short", timeout_s=60, pause_s=3) == ["0", "1", "2"]
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"writing step 1 to .* did not finish within 1 s "
                           r"\(config.checkpoint_timeout_s\): the process was paused .* "
                           r"Steps \[0\] .* resume from step 0"):
    _save_while_paused(tmp_path / "long", timeout_s=1, pause_s=3)
  # What it leaves resumes: step 0 is intact.
  import jax.numpy as jnp
  import grain
  it = iter(grain.MapDataset.range(8).to_iter_dataset())
  abstract = {"w": jax.ShapeDtypeStruct((64, 1024, 1024), jnp.float32)}
  again = train_checkpoints.TrainCheckpoints(str(tmp_path / "long"), keep=3)
  step, state = again.restore(abstract, it)
  again.close()
  assert step == 0 and float(state["w"].min()) == 1.0


# ----------------------------------------------------------------------------
# 4. One run per workdir.
# ----------------------------------------------------------------------------
def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_second_run_in_a_held_workdir_is_refused(tmp_path):
  wd = str(tmp_path / "wd")
  os.makedirs(wd)
  with workdir_lib.WorkdirLock(wd, log=lambda *_: None):  # a live run (this process)
    with pytest.raises(workdir_lib.WorkdirError,
                       match=f"in use by another run: pid {os.getpid()} on host "
                             f"{socket.gethostname()}"):
      train.train_and_evaluate(_tiny(), wd, **ONE_DEVICE)
  assert not os.path.exists(os.path.join(wd, "checkpoints"))
  assert not os.path.exists(os.path.join(wd, workdir_lib.LOCK_FILE))  # released on exit


@pytest.mark.parametrize("holder,taken", [
    (dict(host="HOST", pid="DEAD", heartbeat=0), True),          # killed here
    (dict(host="elsewhere", pid=1, heartbeat=-1000), True),       # lost VM: old heartbeat
    (dict(host="elsewhere", pid=1, heartbeat=0), False),          # alive elsewhere
])
def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path, holder, taken):
  lock = tmp_path / workdir_lib.LOCK_FILE
  info = dict(holder, started=time.time(), heartbeat=time.time() + holder["heartbeat"])
  info["host"] = socket.gethostname() if info["host"] == "HOST" else info["host"]
  info["pid"] = _dead_pid() if info["pid"] == "DEAD" else info["pid"]
  lock.write_text(json.dumps(info))
  said = []
  mine = workdir_lib.WorkdirLock(str(tmp_path), stale_after_s=300, log=said.append)
  if taken:
    mine.acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "Taking over a stale lock" in said[0]
    mine.release()
    assert not lock.exists()
  else:
    with pytest.raises(workdir_lib.WorkdirError, match="pid 1 on host elsewhere"):
      mine.acquire()
    assert json.loads(lock.read_text())["host"] == "elsewhere"  # untouched


def test_lock_heartbeat_is_refreshed(tmp_path):
  lock = workdir_lib.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  first = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["heartbeat"]
  time.sleep(0.3)
  assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["heartbeat"] > first
  lock.release()


# ----------------------------------------------------------------------------
# 5. A resumed run trains with the config it was made with.
# ----------------------------------------------------------------------------
def test_resume_with_a_changed_config_is_refused_unless_allowed(tmp_path, capsys):
  wd = str(tmp_path / "wd")
  train.train_and_evaluate(_tiny(), wd, **ONE_DEVICE)
  changed = _tiny(log_every=1)  # operational keys may change freely ...
  changed.optim.base_lr = 1e3   # ... what is trained may not
  changed.alpha.init = 1e4
  with pytest.raises(workdir_lib.WorkdirError) as e:
    train.train_and_evaluate(changed, wd, **ONE_DEVICE)
  msg = str(e.value)
  assert "alpha.init: 0.1 -> 10000.0" in msg and "optim.base_lr: 0.001 -> 1000.0" in msg
  assert "log_every" not in msg and "allow_config_change=True" in msg
  assert json.load(open(os.path.join(wd, "config.json")))["optim"]["base_lr"] == 0.001
  changed.allow_config_change = True
  capsys.readouterr()
  train.train_and_evaluate(changed, wd, **ONE_DEVICE)
  assert "Resuming at step 4 with a changed config" in capsys.readouterr().out
  record = json.loads(open(os.path.join(wd, workdir_lib.CONFIG_CHANGES_FILE)).read())
  assert record["step"] == 4 and record["changes"]["optim.base_lr"] == [0.001, 1000.0]
  assert json.load(open(os.path.join(wd, "config.json")))["optim"]["base_lr"] == 1000.0
  os.remove(os.path.join(wd, "config.json"))  # checkpoints whose config is gone: say so
  capsys.readouterr()
  train.train_and_evaluate(changed, wd, **ONE_DEVICE)
  assert "holds checkpoints (step 4) but no config.json" in capsys.readouterr().out
  assert os.path.exists(os.path.join(wd, "config.json"))


# ----------------------------------------------------------------------------
# Collapse: a stalled energy run is reported.
# ----------------------------------------------------------------------------
def test_stall_detector_needs_every_sign_for_enough_log_steps():
  stalled = {"step_error_1": 0.3, "step_error_2": 0.3, "corrupted_error": 0.3, "alpha": 0.0,
             "grad_norm": 0.0}
  d = metrics.StallDetector(patience=3)
  assert [d.update(stalled) is not None for _ in range(4)] == [False, False, True, True]
  for healthy in (dict(stalled, step_error_2=0.2),              # restores
                  dict(stalled, alpha=0.05, grad_norm=0.5)):     # still learning
    d = metrics.StallDetector(patience=2)
    assert [d.update(v) for v in (stalled, healthy, stalled)] == [None, None, None]
  assert metrics.StallDetector(patience=0).update(stalled) is None
  assert metrics.StallDetector(patience=1).update({"loss": 1.0, "accuracy": 0.5}) is None


def test_collapsed_run_warns_in_console_and_metrics(tmp_path, capsys):
  wd = str(tmp_path / "wd")
  c = _tiny(steps=4, log_every=1, stall_log_steps=2)
  c.alpha.init = 1e-30  # a step size at its floor: restoration leaves the input as it is
  train.train_and_evaluate(c, wd, **ONE_DEVICE)
  assert "WARNING: step 2: the run has stalled for 2 log steps" in capsys.readouterr().out
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r.get("stalled", 0) for r in records] == [0, 1, 1, 1]
  healthy = str(tmp_path / "healthy")
  train.train_and_evaluate(_tiny(steps=4, log_every=1, stall_log_steps=2), healthy, **ONE_DEVICE)
  assert not any("stalled" in json.loads(l) for l in open(os.path.join(healthy, "metrics.jsonl")))


# ----------------------------------------------------------------------------
# 7. Bad input: one line, exit 2, nothing half-built.
# ----------------------------------------------------------------------------
def test_bad_command_lines_are_one_line_with_exit_2(tmp_path):
  wd = str(tmp_path / "wd")
  cases = [
      (["--config=configs/tiny.py", "--config.totl_steps=5"],
       "error: config key 'totl_steps' does not exist; did you mean 'total_steps'?"),
      (["--config=configs/no_such.py"], "error: config file configs/no_such.py not found"),
      (["--config=configs/demo.py:tsk=sr4"],
       "error: config argument 'tsk=sr4': expected KEY=VALUE with KEY in"),
      (["--config=configs/tiny.py", "--config.model.nope=1"],
       "error: --config.model.nope: no such config key"),
      (["--config=configs/tiny_finetune.py", "--config.alpha.init=1.0"],
       "error: --config.alpha.init: no such config key in this config: 'alpha' belongs to the "
       "block of the energy, sorting objectives"),
      (["--config=configs/tiny.py", "--config.batch_size=-4"],
       "error: config.batch_size: must be a positive int, got -4"),
      (["--config=configs/tiny.py", f"--workdir={tmp_path}/a_file/run"],
       f"error: cannot write to workdir {tmp_path}/a_file/run: Not a directory"),
      (["--config=configs/tiny.py", "--config.data.source=tfds", "--config.data.name=fashon_mnist"],
       "error: data.name='fashon_mnist' is not a TFDS dataset; did you mean 'fashion_mnist'?"),
  ]
  (tmp_path / "a_file").write_text("")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ebm_pretrain.main", *args]
      + ([] if any(a.startswith("--workdir") for a in args) else [f"--workdir={wd}"]),
      cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for args, _ in cases]  # all at once: each is mostly interpreter start-up
  for proc, (args, want) in zip(procs, cases):
    _, err = proc.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err, (args, err[-3000:])
    assert [l for l in lines if l.startswith("error:")] == lines[-1:], (args, err[-3000:])
    assert lines[-1].startswith(want), (want, err[-3000:])
    assert proc.returncode == 2, (args, proc.returncode)
  assert not os.path.exists(os.path.join(wd, "checkpoints"))


def test_truncated_fashion_mnist_is_named_and_leaves_nothing_built(tmp_path):
  idx = fake_idx_dir(tmp_path / "idx")  # (tests never read Debian's files)
  test_images = idx / "t10k-images-idx3-ubyte.gz"
  data = test_images.read_bytes()
  test_images.write_bytes(data[:len(data) // 2])
  cfg = load_config("demo").data
  cfg.idx_dir, cfg.data_dir = str(idx), str(tmp_path / "tfds")
  with pytest.raises(sources.DataSourceError, match="t10k-images-idx3-ubyte.gz"):
    sources.get_source(cfg, "train")
  assert not os.path.exists(tmp_path / "tfds") or os.listdir(tmp_path / "tfds") == []


def test_unknown_tfds_name_is_one_line():
  with pytest.raises(sources.DataSourceError) as e:
    sources.tfds_source("no_such_dataset_xyz", "train", None)
  assert str(e.value) == "data.name='no_such_dataset_xyz' is not a TFDS dataset"
