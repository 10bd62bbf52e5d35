"""The launch scripts parse, and pass shellcheck."""
import glob
import os
import shutil
import subprocess

import pytest

from helpers import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh"))) + [os.path.join(ROOT, ".ci", "run")]


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (CI installs it)")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  proc = subprocess.run(["shellcheck", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_script_prints_usage_without_arguments():
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_vm.sh")], capture_output=True, text=True)
  assert proc.returncode == 2 and "usage:" in proc.stderr


def test_gpu_benchmark_prints_its_plan_then_refuses_a_machine_without_a_gpu(tmp_path):
  """On this CPU-only machine: the plan first, then one clear line and exit 2,
  before any benchmark runs or any output directory is made."""
  from helpers import cli_env
  out = tmp_path / "bench"
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "bench_gpu.sh"), str(out)],
                        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout.startswith("plan:") and "ViT-B/16 224px bf16 N=2" in proc.stdout
  assert proc.stderr.startswith("error: no GPU visible to JAX") and "Traceback" not in proc.stderr
  assert not out.exists()
