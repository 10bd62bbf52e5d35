"""Preemption and crashes: a killed or SIGTERMed run, rerun with the same command,
ends exactly where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import time

import pytest

from helpers import ROOT, assert_trees_close, cli_env, latest_params, main_cmd, run_main

# Long enough (each tiny step takes milliseconds) that a signal lands mid-run.
STEPS = 60
OVERRIDES = (f"--config.total_steps={STEPS}", "--config.checkpoint_every=4",
             "--config.log_every=4", "--config.image_every=1000", "--config.eval_examples=0")


def _last_record(workdir, step):
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in records if r["step"] == step and "loss" in r][-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("uninterrupted"))
  run_main("configs/tiny.py", wd, *OVERRIDES)
  return wd


def _start_and_interrupt(wd, sig, after_step, command=("configs/tiny.py", *OVERRIDES)):
  proc = subprocess.Popen(main_cmd(command[0], wd, *command[1:]), cwd=ROOT, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  target = os.path.join(wd, "checkpoints", str(after_step))
  deadline = time.time() + 240
  while not os.path.isdir(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def _assert_same_end(wd, reference):
  step, state = latest_params(wd)
  ref_step, ref_state = latest_params(reference)
  assert step == ref_step == STEPS
  assert_trees_close(state, ref_state, rtol=1e-6, atol=1e-7)
  got, want = _last_record(wd, STEPS), _last_record(reference, STEPS)
  for k in ("loss", "step_error_1", "step_error_2", "alpha", "grad_norm"):
    assert got[k] == pytest.approx(want[k], rel=1e-6), k


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, reference):
  wd = str(tmp_path / "killed")
  code, _, _ = _start_and_interrupt(wd, signal.SIGKILL, after_step=8)
  assert code == -signal.SIGKILL
  killed_at, _ = latest_params(wd)
  assert 8 <= killed_at < STEPS
  # The killed run's lock is still there: stale (its process is gone), so the
  # rerun takes it over instead of refusing.
  assert os.path.exists(os.path.join(wd, "run.lock"))
  # A half-written checkpoint (as a crash mid-save leaves) is never picked up.
  junk = os.path.join(wd, "checkpoints", f"{STEPS - 1}.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(junk, "state"))
  open(os.path.join(junk, "state", "garbage"), "w").write("half written")
  proc = run_main("configs/tiny.py", wd, *OVERRIDES)
  assert f"Resuming from checkpoint step {killed_at}" in proc.stdout
  assert "Taking over a stale lock" in proc.stdout
  _assert_same_end(wd, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_exits_75_and_rerun_equals_uninterrupted(tmp_path, reference, sig):
  """SIGTERM (preemption) and SIGINT (Ctrl-C) save, then exit with 75 (EX_TEMPFAIL:
  rerun to resume), which schedulers that requeue on failure requeue."""
  wd = str(tmp_path / "stopped")
  code, out, err = _start_and_interrupt(wd, sig, after_step=4)
  name = signal.Signals(sig).name
  assert code == 75, err[-2000:]
  assert f"Stopped ({name}): checkpoint saved at step" in out
  assert "Traceback" not in err
  saved = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  assert latest_params(wd)[0] == saved < STEPS
  assert not os.path.exists(os.path.join(wd, "run.lock"))
  proc = run_main("configs/tiny.py", wd, *OVERRIDES)
  assert f"Resuming from checkpoint step {saved}" in proc.stdout
  _assert_same_end(wd, reference)


def test_killed_fine_tuning_resumes_exactly(tmp_path, tiny_pretrain):
  """The same guarantee for a fine-tuning run (RandAug, mixup/cutmix, drop path,
  periodic evaluation and best/ checkpoints)."""
  pre = tiny_pretrain
  overrides = ("--config.total_steps=60", "--config.checkpoint_every=4", "--config.eval_every=20",
               f"--config.init={pre}")
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "killed")
  run_main("configs/tiny_finetune.py", ref, *overrides)
  code, _, _ = _start_and_interrupt(wd, signal.SIGKILL, after_step=8,
                                    command=("configs/tiny_finetune.py", *overrides))
  assert code == -signal.SIGKILL
  killed_at, _ = latest_params(wd)
  assert killed_at < 60
  proc = run_main("configs/tiny_finetune.py", wd, *overrides)
  assert f"Resuming from checkpoint step {killed_at}" in proc.stdout
  assert "Initialised the backbone" not in proc.stdout  # resumed, not re-initialised
  assert_trees_close(latest_params(wd)[1], latest_params(ref)[1], rtol=1e-6, atol=1e-7)
  for k in ("loss", "accuracy", "grad_norm"):
    assert _last_record(wd, 60)[k] == pytest.approx(_last_record(ref, 60)[k], rel=1e-6), k
  evals = lambda w: [r["eval/top1"] for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))
                     if "eval/top1" in r]
  assert evals(wd)[-1] == evals(ref)[-1]
  assert sorted(os.listdir(os.path.join(wd, "best"))) == sorted(os.listdir(os.path.join(ref, "best")))


def test_killed_segmentation_resumes_exactly(tmp_path, tiny_pretrain):
  """And for segmentation: the label maps' augmentation, BatchNorm statistics,
  dropout, the mIoU evaluations and best/."""
  overrides = ("--config.total_steps=40", "--config.checkpoint_every=4", "--config.eval_every=20",
               f"--config.init={tiny_pretrain}")
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "killed")
  run_main("configs/tiny_seg.py", ref, *overrides)
  code, _, _ = _start_and_interrupt(wd, signal.SIGKILL, after_step=8,
                                    command=("configs/tiny_seg.py", *overrides))
  assert code == -signal.SIGKILL
  killed_at, _ = latest_params(wd)
  assert killed_at < 40
  proc = run_main("configs/tiny_seg.py", wd, *overrides)
  assert f"Resuming from checkpoint step {killed_at}" in proc.stdout
  assert_trees_close(latest_params(wd)[1], latest_params(ref)[1], rtol=1e-6, atol=1e-7)
  for k in ("loss", "pixel_accuracy", "grad_norm"):
    assert _last_record(wd, 40)[k] == pytest.approx(_last_record(ref, 40)[k], rel=1e-6), k
  evals = lambda w: [r["eval/miou"] for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))
                     if "eval/miou" in r]
  assert len(evals(wd)) >= 1 and evals(wd)[-1] == evals(ref)[-1]


def test_a_run_stopped_after_its_last_step_still_evaluates_on_resume(tmp_path, tiny_pretrain):
  """A stop that lands on the final step saves it before the final evaluation;
  the rerun has no steps left but owes that evaluation (the study records its
  result: it once recorded an empty one)."""
  from helpers import train_inprocess
  wd = str(tmp_path / "ft")
  kw = dict(total_steps=4, checkpoint_every=2, eval_every=0, init=tiny_pretrain)
  _, first = train_inprocess("tiny_finetune", wd, **kw)
  _, again = train_inprocess("tiny_finetune", wd, **kw)
  assert "eval/top1" in first
  assert again["eval/top1"] == first["eval/top1"]
