"""The benchmark command writes every field (timings are reported, not asserted)."""
import json

import pytest

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


def test_torch_reference_is_listing_1_of_the_same_model():
  """The PyTorch reference (timm's parameter names) loaded with our ViT's weights
  gives our energy and our restoration loss, and the same gradients: it times the
  same computation."""
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ebm_pretrain import energy, models, torch_reference
  from ebm_pretrain.models import vit_timm
  model = dict(name="vit", variant="mu/4", pool="tok", posemb="learn")
  energy_model = models.get_energy_model("vit", "mu/4", pool="tok", dtype=jnp.float32,
                                         param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  clean = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  params = energy_model.init(jax.random.key(2), x)["params"]
  energy_fn = lambda p, x: energy_model.apply({"params": p}, x)
  log_alpha = jnp.log(0.7)

  def ours(p, log_alpha):
    return energy.restoration_loss(energy_fn, p, jnp.exp(log_alpha), x, clean, 2)
  loss, (grads, grad_alpha) = jax.value_and_grad(ours, argnums=(0, 1))(params, log_alpha)

  backbone = torch_reference.ViT("mu/4", 16, 3, "tok")
  _, _, sd = vit_timm.to_timm(params["backbone"], model, 16, 3)
  backbone.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
  head = torch.nn.Linear(32, 1, bias=False)
  head.weight.data = torch.from_numpy(np.array(params["energy_head"]["kernel"]).T.copy())
  t_alpha = torch.nn.Parameter(torch.tensor(float(log_alpha)))
  nchw = lambda a: torch.from_numpy(np.array(a).transpose(0, 3, 1, 2).copy())
  np.testing.assert_allclose(head(backbone(nchw(x))).detach().numpy()[:, 0],
                             energy_fn(params, x), rtol=1e-5, atol=1e-5)
  t_loss = torch_reference.listing1_loss(backbone, head, t_alpha, nchw(x), nchw(clean), 2,
                                         torch.nn.SmoothL1Loss(beta=1.0))
  t_loss.backward()
  np.testing.assert_allclose(t_loss.item(), loss, rtol=1e-5)
  np.testing.assert_allclose(t_alpha.grad.item(), grad_alpha, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(head.weight.grad.numpy()[0], grads["energy_head"]["kernel"][:, 0],
                             rtol=1e-4, atol=1e-7)
  block0 = grads["backbone"]["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(backbone.blocks[0].mlp.fc1.weight.grad.numpy().T, block0,
                             rtol=1e-4, atol=1e-6)


def test_benchmark_times_the_torch_reference_in_the_same_run(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_pretrain.benchmark", "--config=configs/tiny.py", f"--output={out}",
       "--steps=2", "--matmul_size=256", "--pipeline_batches=2", "--reference=torch",
       "--variant=data.image_size=32,batch_size=4"],
      cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rep = json.loads(out.read_text())
  r = rep["results"]
  for name in ("torch_energy_step", "torch_supervised_step"):
    assert r[name]["step_s"] > 0 and r[name]["img_per_s"] > 0, name
    assert r[name]["flops"] == r[name.removeprefix("torch_")]["flops"]
    assert r[name]["torch"] and r[name]["threads"] >= 1
  for key in ("energy_speed_over_torch", "supervised_speed_over_torch",
              "torch_energy_over_supervised_time"):
    assert rep["summary"][key] > 0, key
  assert rep["summary"]["energy_speed_over_torch"] == pytest.approx(
      r["torch_energy_step"]["step_s"] / r["energy_step"]["step_s"])
  # A variant with its own image size and batch: its img/s counts its own batch,
  # and 4x the pixels per image cost more FLOPs per image.
  v = r["energy_step[data.image_size=32,batch_size=4]"]
  assert v["img_per_s"] == pytest.approx(4 / v["step_s"])
  assert v["flops"] / 4 > 3 * r["energy_step"]["flops"] / 16
  assert "torch_energy_step" in proc.stdout


def test_torch_reference_refuses_what_it_cannot_time(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_pretrain.benchmark", "--config=configs/tiny.py:model=convnext",
       f"--output={tmp_path / 'b.json'}", "--reference=torch"],
      cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("error: ") and ("model.name" in proc.stderr
                                                  or "needs PyTorch" in proc.stderr)
  assert not (tmp_path / "b.json").exists()
