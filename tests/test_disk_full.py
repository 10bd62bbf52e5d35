"""A write that finds no space (README, "Failure handling"): a checkpoint on a
real full filesystem (a 1.2 MB tmpfs, as root), and metrics, TensorBoard,
image and study-cell writes that raise ENOSPC: one line, exit 2, nothing
half-written picked up, and a rerun after space is freed resumes exactly."""
import errno
import os
import re
import subprocess
import sys

import jax
import pytest

from ebm_pretrain import fs, study, train
from ebm_pretrain.errors import NoSpaceError
from helpers import assert_trees_close, latest_params, load_config, run_main

TINY = ("--config.total_steps=8", "--config.checkpoint_every=1", "--config.eval_examples=0",
        "--config.image_every=4")


@pytest.fixture
def small_disk(tmp_path):
  """A 1.2 MB tmpfs (root only): holds two of the tiny run's checkpoints."""
  mnt = tmp_path / "disk"
  mnt.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
  if mount.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs (needs root): {mount.stderr.strip()}")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_mid_checkpoint_is_one_line_and_a_rerun_resumes_exactly(tmp_path, small_disk):
  ref = str(tmp_path / "ref")
  run_main("configs/tiny.py", ref, *TINY)
  wd = str(small_disk / "wd")
  proc = run_main("configs/tiny.py", wd, *TINY, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]  # no traceback, no Orbax log, no thread noise
  m = re.fullmatch(r"error: no space left on (\S+) while writing step (\d+); steps \[([\d, ]+)\] "
                   r"in (\S+) are intact; free space, then rerun the same command: it resumes "
                   r"from step (\d+)", lines[0])
  assert m, lines[0]
  step, intact = int(m.group(2)), [int(s) for s in m.group(3).split(",")]
  ckpts = os.path.join(wd, "checkpoints")
  assert m.group(1) == ckpts and m.group(4) == ckpts
  finalised = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert finalised == intact and step == intact[-1] + 1 and int(m.group(5)) == intact[-1]
  # Space freed: the rerun resumes from the newest intact step (the abandoned
  # write's folder is never read) and ends where an uninterrupted run does.
  subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
  rerun = run_main("configs/tiny.py", wd, *TINY)
  assert f"Resuming from checkpoint step {intact[-1]}" in rerun.stdout
  assert not [d for d in os.listdir(ckpts) if not d.isdigit()]
  step_wd, state = latest_params(wd)
  step_ref, state_ref = latest_params(ref)
  assert step_wd == step_ref == 8
  assert_trees_close(state, state_ref, rtol=0, atol=0)


def _tiny(**overrides):
  c = load_config("tiny", "steps=4")
  c.eval_examples, c.checkpoint_every, c.log_every, c.image_every = 0, 2, 1, 2
  for k, v in overrides.items():
    c[k] = v
  return c


def _no_space(path="/full/disk/file"):
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize("what", ["metrics", "tensorboard", "image"])
def test_a_full_disk_under_metrics_tensorboard_or_images_stops_the_run_cleanly(
    tmp_path, monkeypatch, what):
  """The n-th write of one kind fails with ENOSPC (step 3: after the step-2
  checkpoint): NoSpaceError names the step and the intact checkpoints; the
  rerun (space back) resumes exactly."""
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "wd")
  train.train_and_evaluate(_tiny(), ref, devices=jax.devices()[:1])
  from tensorboardX import event_file_writer
  target = {"metrics": (fs.AppendFile, "write"),
            "tensorboard": (event_file_writer.EventsWriter, "flush"),
            "image": (fs, "write_bytes")}[what]
  original = getattr(*target)
  calls = {"n": 0}
  # Each fails after the step-2 checkpoint: a metrics line per step; TensorBoard
  # flushes the scalars, the step-2 grid and the checkpoint's metrics; a grid
  # every 2 steps (config.json and the lock go through write_bytes too).
  fail_at = {"metrics": 3, "tensorboard": 5, "image": 2}[what]

  def failing(*args, **kwargs):
    if what == "image" and not os.fspath(args[0]).endswith(".png"):
      return original(*args, **kwargs)
    calls["n"] += 1
    if calls["n"] >= fail_at:
      raise _no_space()
    return original(*args, **kwargs)
  monkeypatch.setattr(*target, failing)
  with pytest.raises(NoSpaceError) as e:
    train.train_and_evaluate(_tiny(), wd, devices=jax.devices()[:1])
  msg = str(e.value)
  assert re.match(r"no space left on /full/disk/file while writing step [34]; steps \[2\] in "
                  r"\S+ are intact; free space, then rerun the same command: it resumes from "
                  r"step 2$", msg), msg
  assert not [f for f in os.listdir(os.path.join(wd, "images")) if f.endswith(".tmp")]
  monkeypatch.setattr(*target, original)
  train.train_and_evaluate(_tiny(), wd, devices=jax.devices()[:1])
  assert_trees_close(latest_params(wd)[1], latest_params(ref)[1], rtol=0, atol=0)


def test_an_interrupted_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
  """fs.write_bytes removes its temporary file when the write fails."""
  target = tmp_path / "cell.json"
  target.write_text("old")
  real_replace = os.replace
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(_no_space(str(target))))
  with pytest.raises(OSError):
    fs.write_text(target, "new")
  monkeypatch.setattr(os, "replace", real_replace)
  assert os.listdir(tmp_path) == ["cell.json"] and target.read_text() == "old"


def test_a_full_disk_while_the_study_writes_a_cell_is_one_line(tmp_path, monkeypatch, capsys):
  out = str(tmp_path / "out")
  real = fs.write_text

  def failing(p, text):
    if "/cells/" in os.fspath(p):
      raise _no_space(os.fspath(p))
    return real(p, text)
  monkeypatch.setattr(fs, "write_text", failing)
  with pytest.raises(SystemExit) as e:
    study.main(["run", "--grid=configs/study/tiny.py:steps=2", f"--out={out}",
                "--only=pretrain/mixed/s0"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and re.match(r"error: no space left on \S+/cells/\S+\.json; the cells "
                                    r"written so far are intact", err[0]), err
  assert os.listdir(os.path.join(out, "cells")) == []


def test_an_abandoned_writes_unretrieved_task_is_dropped_and_other_errors_are_not(tmp_path):
  """An Orbax write task that failed for lack of space and was never awaited is
  reported by asyncio's logger when collected; after the run's one line, that
  report is noise. Another task's error still prints."""
  script = tmp_path / "tasks.py"
  script.write_text(
      "import asyncio, gc\n"
      "from ebm_pretrain import disk_full\n"
      "disk_full.install_filters()\n"
      "async def fail(msg):\n"
      "  raise ValueError(msg)\n"
      "async def main():\n"
      "  for msg in ('RESOURCE_EXHAUSTED: [os_error_code=\\'28\\'] writing ocdbt',\n"
      "              'an unrelated failure'):\n"
      "    t = asyncio.ensure_future(fail(msg))\n"
      "    await asyncio.sleep(0)\n"
      "    del t\n"
      "asyncio.run(main())\n"
      "gc.collect()\n")
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "an unrelated failure" in proc.stderr
  assert "Task exception was never retrieved" in proc.stderr
  assert "os_error_code" not in proc.stderr and "RESOURCE_EXHAUSTED" not in proc.stderr
