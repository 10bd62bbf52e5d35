"""Where metrics go: JSONL and TensorBoard event files (tensorboardX, no
TensorFlow), restoration grids as PNG, a console line and an optional bar."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np
from PIL import Image


class MetricWriter:
  """Writes only on the primary process; the others get a no-op writer."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> str | None:
    """uint8 [H, W, C]; returns the PNG path."""
    if not self.enabled:
      return None
    path = os.path.join(self.workdir, "images", f"{name}_{step:08d}.png")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    self._tb.add_image(name, image, step, dataformats="HWC")
    self._tb.flush()
    return path

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def image_grid(columns: dict[str, np.ndarray], mean, std, pad: int = 2) -> np.ndarray:
  """Rows = examples, columns = stages (corrupted, step_1..N, original);
  normalised float images -> one uint8 grid."""
  cols = [np.clip(np.asarray(v, np.float32) * np.asarray(std) + np.asarray(mean), 0, 1)
          for v in columns.values()]
  b, h, w, c = cols[0].shape
  grid = np.ones((b * (h + pad) + pad, len(cols) * (w + pad) + pad, c), np.float32)
  for j, col in enumerate(cols):
    for i in range(b):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  return (np.nan_to_num(grid) * 255).round().astype(np.uint8)


class ConsoleReporter:
  """One log line every K steps; a progress bar when stderr is a terminal."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
    self.total, self.enabled = total_steps, enabled
    self.bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
    self.t0, self.step0 = time.time(), start_step

  def update(self, step: int):
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def line(self, step: int, epoch: float, values: dict[str, float], img_per_s: float) -> None:
    if not self.enabled:
      return
    elapsed = time.time() - self.t0
    rate = (step - self.step0) / max(elapsed, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    parts = [f"step {step}/{self.total}", f"epoch {epoch:.2f}"]
    parts += [f"{k} {v:.4g}" for k, v in values.items()]
    parts += [f"img/s {img_per_s:.1f}", f"eta {_hms(eta)}"]
    msg = " | ".join(parts)
    if self.bar is not None:
      self.bar.write(msg)
    else:
      logging.info(msg)
      print(msg, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  s = int(seconds)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
