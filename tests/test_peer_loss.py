"""Two local processes (jax.distributed, one CPU device each) meeting the faults
of a multi-process run: a process killed (either one: every survivor stops
with one line and exit 75 within the heartbeat timeout, a rerun resumes
exactly, past an unreadable newest checkpoint too), SIGTERM to one process
(both stop at the same step), and a NaN update (both exit 3, nothing saved)."""
import os
import re
import signal
import subprocess
import time

import pytest

from ebm_pretrain import checkpoints, peer_loss
from helpers import ROOT, assert_trees_close, cli_env, free_port, latest_params, main_cmd

HEARTBEAT_S = 5
RUN = ("--config.total_steps=24", "--config.checkpoint_every=4", "--config.log_every=1",
       "--config.eval_examples=0", "--config.image_every=1000",
       f"--heartbeat_timeout_s={HEARTBEAT_S}")


def _start(wd: str, tmp, *extra: str) -> list[tuple[subprocess.Popen, str, str]]:
  """Both processes; each one's stdout and stderr go to files."""
  port, out = free_port(), []
  for i in range(2):
    o, e = (os.path.join(tmp, f"{os.path.basename(wd)}_{i}.{ext}") for ext in ("out", "err"))
    with open(o, "w") as fo, open(e, "w") as fe:
      p = subprocess.Popen(
          main_cmd("configs/tiny.py", wd, *RUN, *extra, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}"),
          cwd=ROOT, env=cli_env(1), stdout=fo, stderr=fe)
    out.append((p, o, e))
  return out


def _finish(procs, timeout=240) -> list[tuple[int, str, str]]:
  res = []
  for p, o, e in procs:
    p.wait(timeout=timeout)
    res.append((p.returncode, open(o).read(), open(e).read()))
  return res


def _wait_for_step_folder(wd: str, step: int, procs, timeout=240) -> None:
  path = os.path.join(wd, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if time.time() > deadline or any(p.poll() is not None for p, _, _ in procs):
      raise AssertionError(f"checkpoint {step} never appeared: "
                           + " / ".join(open(e).read()[-2000:] for _, _, e in procs))
    time.sleep(0.05)


def _steps(wd: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The same two-process run, uninterrupted."""
  tmp = str(tmp_path_factory.mktemp("peers"))
  wd = os.path.join(tmp, "ref")
  for status, out, err in _finish(_start(wd, tmp)):
    assert status == 0, err[-3000:]
  return latest_params(wd)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_stops_the_survivor_in_one_line_and_a_rerun_resumes_exactly(
    tmp_path, reference, victim):
  wd, tmp = str(tmp_path / "wd"), str(tmp_path)
  procs = _start(wd, tmp)
  # Killed once two checkpoints are written; process 0 (the coordinator) or 1.
  _wait_for_step_folder(wd, 8, procs)
  procs[victim][0].kill()  # the process the user started (SIGKILL)
  killed_at = time.time()
  survivor, _, err_file = procs[1 - victim]
  survivor.wait(timeout=120)
  took = time.time() - killed_at
  err = open(err_file).read()
  # Bounded by the heartbeat timeout (a lost coordinator is seen at once).
  assert took < HEARTBEAT_S + 30, took
  assert survivor.returncode == peer_loss.EXIT_PEER_LOST, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1, err[-3000:]  # no C++ abort dump, no traceback
  # Seen by the coordination service (heartbeats, or the coordinator's connection)
  # or by a collective that was under way (the peer's socket closed).
  lost = re.escape("process 1" if victim == 1 else "process 0 (the coordinator)") + \
      r" of the multi-process run \((no heartbeat for 5 s, --heartbeat_timeout_s|its connection " \
      r"closed)\)"
  m = re.fullmatch(r"error: lost (.*?): stopping; steps \[([\d, ]+)\] in (\S+)/checkpoints are "
                   r"intact and nothing after the loss was saved; rerun all 2 processes with "
                   r"the same command: the run resumes from step (\d+)", lines[0])
  assert m and re.fullmatch(lost, m.group(1)), lines[0]
  saved = _steps(wd)
  assert [int(s) for s in m.group(2).split(",")] == saved and saved[-1] >= 8
  assert int(m.group(4)) == saved[-1]
  if victim == 0:  # and the newest checkpoint unreadable: the rerun falls back past it
    for root, _, files in os.walk(os.path.join(wd, "checkpoints", str(saved[-1]), "state")):
      if os.path.basename(root) == "d":
        for f in files:
          with open(os.path.join(root, f), "r+b") as fh:
            fh.truncate(10)
  rerun = _finish(_start(wd, tmp))
  for status, out, err in rerun:
    assert status == 0, err[-3000:]
  out0 = rerun[0][1]
  if victim == 0:
    assert f"Checkpoint step {saved[-1]} is unreadable" in out0
    assert f"Resuming from checkpoint step {saved[-2]}" in out0
    assert os.path.isdir(os.path.join(wd, checkpoints.UNREADABLE_DIR, str(saved[-1])))
  else:
    assert f"Resuming from checkpoint step {saved[-1]}" in out0
  step, state = latest_params(wd)
  assert step == reference[0] == 24
  assert_trees_close(state, reference[1], rtol=0, atol=0)


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
  wd = str(tmp_path / "wd")
  procs = _start(wd, str(tmp_path))
  _wait_for_step_folder(wd, 4, procs)
  procs[1][0].send_signal(signal.SIGTERM)
  res = _finish(procs)
  assert [r[0] for r in res] == [75, 75], [r[2][-2000:] for r in res]
  m = re.search(r"Stopped \(SIGTERM\): checkpoint saved at step (\d+)", res[0][1])
  assert m, res[0][1][-2000:]
  assert _steps(wd)[-1] == int(m.group(1))
  assert all("Traceback" not in r[2] for r in res)


def test_a_nan_update_stops_both_processes_and_saves_nothing(tmp_path):
  wd = str(tmp_path / "wd")
  res = _finish(_start(wd, str(tmp_path), "--config.optim.base_lr=1e39",
                       "--config.checkpoint_every=1"))
  assert [r[0] for r in res] == [3, 3], [r[2][-2000:] for r in res]
  for _, _, err in res:  # (above it, numpy's and tensorboardX's warnings about the overflow)
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]] and errors[0].startswith(
        "error: the train state at step 1 is not finite"), err[-2000:]
    assert "Traceback" not in err
  assert _steps(wd) == []
