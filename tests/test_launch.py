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
