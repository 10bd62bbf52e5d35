"""The benchmark command writes every field (timings are reported, not asserted)."""
import json

from helpers import ROOT, cli_env
import subprocess
import sys

from ebm_pretrain import benchmark


def test_benchmark_json_has_every_field(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_pretrain.benchmark", "--config=configs/tiny.py", f"--output={out}",
       "--steps=1", "--matmul_size=256", "--pipeline_batches=3",
       "--variant=stepwise_grads=False,inner_steps=1"],
      cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rep = json.loads(out.read_text())
  for name in ("energy_step", "supervised_step", "forward"):
    for field in benchmark.FIELDS:
      assert field in rep["results"][name], (name, field)
      assert rep["results"][name][field] is not None, (name, field)
    assert rep["results"][name]["flops"] > 0
  assert rep["results"]["roofline"]["flops_per_s"] > 0
  # The variant is timed in the same run and compared with the default energy step.
  variant = rep["results"]["energy_step[stepwise_grads=False,inner_steps=1]"]
  assert variant["step_s_over_default"] > 0 and variant["xla_memory_mib_over_default"] > 0
  # One inner step is half the default's (N=2) second-order work.
  assert variant["flops"] < 0.75 * rep["results"]["energy_step"]["flops"]
  assert rep["pipeline"]["img_per_s"] > 0
  for key in ("energy_over_supervised_time", "energy_roofline_fraction", "energy_peak_memory_gib",
              "rss_peak_gib", "pipeline_over_energy_speed"):
    assert rep["summary"][key] is not None, key
  # XLA's count: the energy step (double backward, twice) costs more than the supervised one.
  assert rep["results"]["energy_step"]["flops"] > rep["results"]["supervised_step"]["flops"]
  assert "energy_step" in proc.stdout and "roofline" in proc.stdout


def test_benchmark_bad_variant_is_a_clear_error_before_timing(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_pretrain.benchmark", "--config=configs/tiny.py",
       f"--output={tmp_path / 'b.json'}", "--variant=model.nonsense=1"],
      cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "override 'model.nonsense=1'" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "b.json").exists()
