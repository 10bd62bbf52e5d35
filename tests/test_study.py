"""The study harness end to end on a two-method, two-seed grid of tiny synthetic
runs: run, kill during a pretraining, rerun (it resumes that pretraining and
skips the finished cells), report (deterministic)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from ebm_pretrain import study
from helpers import ROOT, cli_env

GRID = "configs/study/tiny.py:steps=40"


def _study(*args):
  return [sys.executable, "-m", "ebm_pretrain.study", *args]


def test_grid_runs_resumes_after_a_kill_and_reports(tmp_path):
  out = str(tmp_path / "study")
  grid = study.load_config_file(GRID)
  ids = [c.id for c in study.cells(grid)]
  assert ids[:3] == ["pretrain/mixed/s0", "ft/mixed/s0", "knn/mixed/s0"]
  assert len([i for i in ids if i.startswith("pretrain/")]) == 2  # scratch has none

  only = "[pk]*"  # pretrainings and kNN: 2 methods x 2 seeds
  proc = subprocess.Popen(_study("run", f"--grid={GRID}", f"--out={out}", f"--only={only}"),
                          cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  target = os.path.join(out, "runs", "pretrain_mixed_s1", "checkpoints", "4")
  deadline = time.time() + 400
  while not os.path.isdir(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  done = sorted(os.listdir(os.path.join(out, "cells")))
  assert done == ["knn__mixed__s0.json", "pretrain__mixed__s0.json"]

  rerun = subprocess.run(_study("run", f"--grid={GRID}", f"--out={out}", f"--only={only}"),
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "pretrain/mixed/s0: done, skipped" in rerun.stdout
  assert "knn/mixed/s0: done, skipped" in rerun.stdout
  assert "Resuming from checkpoint step" in rerun.stdout  # pretrain/mixed/s1 resumed
  cells = sorted(os.listdir(os.path.join(out, "cells")))
  assert len(cells) == 6
  record = json.load(open(os.path.join(out, "cells", "pretrain__mixed__s1.json")))
  assert record["seed"] == 1 and record["config"]["seed"] == 1 and len(record["commit"]) >= 7
  assert record["config"]["data"]["holdout"] == 16 and record["wall_s"] > 0
  knn = json.load(open(os.path.join(out, "cells", "knn__scratch__s0.json")))
  assert 0 <= knn["metrics"]["eval/knn_top1"] <= 1

  # The report: from the JSON alone, the same bytes every time.
  table = study.report(out)
  assert "| mixed |" in table and "| scratch |" in table and "(2 seeds)" in table
  digest = lambda: [hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
                    for f in ("table.md", "top1.png")]
  first = digest()
  study.report(out)
  assert digest() == first
