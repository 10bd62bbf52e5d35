"""The paper's Listing 1 written the straightforward PyTorch way: the benchmark's
reference (``python -m ebm_pretrain.benchmark ... --reference=torch``).

What a user would write instead of this package: a pre-norm ViT with the same
sizes, exact GELU, LayerNorm eps 1e-6, learned position embeddings and the
config's pooling (cls token or global average), the same initialisation scales as
``models/vit.py`` (Xavier-uniform dense kernels, N(0, 0.02) position embeddings,
LeCun-normal patch embedding), a bias-free ``Linear(width, 1)`` energy head and
a learnable log alpha; one training step is Listing 1: corrupt, N times
``x = x.detach(); x = x - alpha * autograd.grad(E(x).sum(), x, create_graph=True)``,
the SmoothL1 (beta 1) error of every step against the clean image summed into
one loss, one ``backward()`` and an AdamW step. The corruption is random
patch masking (75% of the patches set to 0, the data mean): a few elementwise
ops, negligible next to the network at any size benchmarked. The supervised
step is the same backbone with a 1000-class head, cross-entropy and AdamW.
Attention is written out (``softmax(q kᵀ / √d) v``): PyTorch's fused CPU
attention kernels have no second derivative, the same reason this package keeps
XLA's plain attention.

The benchmark runs it as a worker process (``python -m
ebm_pretrain.torch_reference``, driven through stdin/stdout by
``benchmark.TorchReference``), so that nothing PyTorch loads shares a process
with XLA: torch's own thread pools slow XLA's steps in a shared process
(docs/performance.md, "Against PyTorch"). torch is an optional
dependency (``pip install -e '.[reference]'``, the CPU-only build, or the test
extra's).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)

  def forward(self, x):
    b, n, d = x.shape
    h = self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
  def __init__(self, width: int, mlp_dim: int):
    super().__init__()
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class _Block(nn.Module):
  def __init__(self, width: int, mlp_dim: int, num_heads: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.attn = _Attention(width, num_heads)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.mlp = _Mlp(width, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
  def __init__(self, channels: int, width: int, patch: int):
    super().__init__()
    self.proj = nn.Conv2d(channels, width, patch, stride=patch)


class ViT(nn.Module):
  """Images [B, C, H, W] -> features [B, width] after the final norm: the cls
  token (``pool="tok"``) or the mean of the patch tokens (``"gap"``, no cls).
  Parameter names are timm's, so ``models/vit_timm.to_timm`` of our parameters
  loads into it (how the tests show it is the same network)."""

  def __init__(self, variant: str, image_size: int, channels: int, pool: str = "tok"):
    super().__init__()
    self.pool = pool
    from ebm_pretrain.models.vit import decode_variant
    cfg = decode_variant(variant)
    width, p = cfg["width"], cfg["patch_size"]
    self.patch_embed = _PatchEmbed(channels, width, p)
    if pool == "tok":
      self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (image_size // p) ** 2, width))
    self.blocks = nn.ModuleList(_Block(width, cfg["mlp_dim"], cfg["num_heads"])
                                for _ in range(cfg["depth"]))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.width = width
    for m in self.modules():  # models/vit.py's initialisation scales
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(m.bias, std=1e-6)
    fan_in = channels * p * p
    nn.init.trunc_normal_(self.patch_embed.proj.weight, std=1 / math.sqrt(fan_in) / .87962566,
                          a=-2 / math.sqrt(fan_in) / .87962566, b=2 / math.sqrt(fan_in) / .87962566)
    nn.init.zeros_(self.patch_embed.proj.bias)

  def forward(self, images):
    x = self.patch_embed.proj(images).flatten(2).transpose(1, 2) + self.pos_embed
    if self.pool == "tok":
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    return x[:, 0] if self.pool == "tok" else x.mean(dim=1)


def _mask_patches(x, patch: int, ratio: float = 0.75):
  """Each example's patches zeroed (the data mean after normalisation) with
  probability ``ratio``."""
  b, _, h, w = x.shape
  keep = (torch.rand(b, 1, h // patch, w // patch) >= ratio).to(x.dtype)
  return x * keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def listing1_loss(backbone: nn.Module, head: nn.Module, log_alpha, x, images, num_steps: int,
                  criterion, autocast=contextlib.nullcontext):
  """Listing 1's loss: N descent steps on the energy from ``x``, each step's
  error against ``images`` (the mean over the steps, as our objective reports it)."""
  loss = 0
  for _ in range(num_steps):
    x = x.detach().requires_grad_(True)
    with autocast():
      energy = head(backbone(x)).float()
    grad, = torch.autograd.grad(energy.sum(), x, create_graph=True)
    x = x - log_alpha.exp() * grad
    loss = loss + criterion(x, images)
  return loss / num_steps


def make_steps(config, seed: int = 0) -> dict[str, Callable[[], float]]:
  """``{"energy_step": fn, "supervised_step": fn}``: each call runs one training
  step of the config's ViT at its batch size, image size, ``inner_steps``,
  ``alpha.init``, ``optim.base_lr`` and ``dtype`` (bfloat16 through CPU autocast),
  on one fixed random uint8 batch, and returns the loss. ``config``: the
  ConfigDict fields that ``benchmark.TorchReference`` sends."""
  torch.manual_seed(seed)
  d = config.data
  patch = int(config.model.variant.split("/")[1])
  rng = np.random.default_rng(seed)
  uint8 = torch.from_numpy(rng.integers(0, 256, (config.batch_size, d.channels, d.image_size,
                                                 d.image_size), dtype=np.uint8))
  labels = torch.from_numpy(rng.integers(0, 1000, (config.batch_size,)))
  mean = torch.tensor(d.mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255
  std = torch.tensor(d.std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16,
                                    enabled=config.dtype == "bfloat16")
  lr, b2, wd = config.optim.base_lr, config.optim.get("b2", 0.999), config.optim.weight_decay

  pool = config.model.get("pool", "tok")
  backbone = ViT(config.model.variant, d.image_size, d.channels, pool)
  head = nn.Linear(backbone.width, 1, bias=False)
  log_alpha = nn.Parameter(torch.tensor(math.log(config.alpha.init)))
  energy_opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters(), log_alpha],
                                 lr=lr, betas=(0.9, b2), weight_decay=wd)
  criterion = nn.SmoothL1Loss(beta=1.0) if config.loss == "smooth_l1" else nn.MSELoss()

  def energy_step() -> float:  # Listing 1
    images = (uint8.float() - mean) / std
    loss = listing1_loss(backbone, head, log_alpha, _mask_patches(images, patch), images,
                         config.inner_steps, criterion, autocast)
    energy_opt.zero_grad()
    loss.backward()
    energy_opt.step()
    return loss.item()

  classifier = ViT(config.model.variant, d.image_size, d.channels, pool)
  logits_head = nn.Linear(classifier.width, 1000)
  sup_opt = torch.optim.AdamW([*classifier.parameters(), *logits_head.parameters()],
                              lr=lr, betas=(0.9, b2), weight_decay=wd)

  def supervised_step() -> float:
    images = (uint8.float() - mean) / std
    with autocast():
      logits = logits_head(classifier(images)).float()
    loss = F.cross_entropy(logits, labels)
    sup_opt.zero_grad()
    loss.backward()
    sup_opt.step()
    return loss.item()

  return {"energy_step": energy_step, "supervised_step": supervised_step}


def main() -> None:
  """Worker: the first stdin line is the config (JSON); it answers
  ``{"ready": {step: seconds of its first call}}``, then each line naming a step
  runs it once and answers ``{"seconds": ..., "loss": ...}``; EOF ends it."""
  import ml_collections
  config = ml_collections.ConfigDict(json.loads(sys.stdin.readline()))
  steps = make_steps(config)
  first = {}
  for name, fn in steps.items():
    t = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - t
  print(json.dumps({"ready": first, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}), flush=True)
  for line in sys.stdin:
    t = time.perf_counter()
    loss = steps[line.strip()]()
    print(json.dumps({"seconds": time.perf_counter() - t, "loss": loss}), flush=True)


if __name__ == "__main__":
  main()
