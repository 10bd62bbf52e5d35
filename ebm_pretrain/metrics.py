"""Where metrics go: JSONL and TensorBoard event files (tensorboardX, no
TensorFlow), restoration grids as PNG, a console line and an optional bar."""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import time

import numpy as np
from PIL import Image

from ebm_pretrain import fs


class MetricWriter:
  """Writes only on the primary process; the others get a no-op writer. Every
  file goes through :mod:`ebm_pretrain.fs`, so a ``gs://`` workdir gets them.
  Every write happens in the caller's thread, so that a failed one (a full
  disk) raises there: tensorboardX's own writer thread would die with a
  traceback and leave the run blocked on its full queue."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.root = fs.path(workdir)
    if not enabled:
      return
    fs.register_tensorboard()
    (self.root / "images").mkdir(parents=True, exist_ok=True)
    (self.root / "tensorboard").mkdir(parents=True, exist_ok=True)
    self._jsonl = fs.AppendFile(self.root / "metrics.jsonl")
    from tensorboardX.event_file_writer import EventsWriter
    self._tb = EventsWriter(os.fspath(self.root / "tensorboard" / "events"))

  def _event(self, step: int, summary) -> None:
    from tensorboardX.proto import event_pb2
    self._tb.write_event(event_pb2.Event(summary=summary, step=step, wall_time=time.time()))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    from tensorboardX import summary
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._event(step, summary.scalar(k, float(v)))
    self._tb.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> str | None:
    """uint8 [H, W, C]; returns the PNG path."""
    if not self.enabled:
      return None
    from tensorboardX import summary
    path = self.root / "images" / f"{name}_{step:08d}.png"
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    fs.write_bytes(path, buf.getvalue())
    self._event(step, summary.image(name, image, dataformats="HWC"))
    self._tb.flush()
    return os.fspath(path)

  def flush(self) -> None:
    """Everything written so far reaches the workdir (cloud files are otherwise
    rewritten at most every half minute)."""
    if self.enabled:
      self._jsonl.flush(force=True)
      self._tb.flush()

  def close(self, failed: bool = False):
    """Closes the files; after a failed write (``failed``), without the final
    flush that would fail again."""
    if not self.enabled:
      return
    if failed:
      for f in (self._jsonl, self._tb):
        try:
          f.close()
        except OSError:
          pass
      return
    self._jsonl.close()
    self._tb.close()


class StallDetector:
  """Energy pretraining that no longer restores: for ``patience`` log steps in a
  row the last restoration step's error is no better than the corrupted
  input's, while alpha is at its floor or the gradient is zero (a collapsed
  run: alpha -> 0, nothing learns, the restored image is the corrupted one).
  ``update`` returns a warning then; 0 turns it off."""
  ALPHA_FLOOR = 1e-6
  GRAD_FLOOR = 1e-10

  def __init__(self, patience: int):
    self.patience, self.count = patience, 0

  def update(self, values: dict[str, float]) -> str | None:
    steps = sorted((k for k in values if k.startswith("step_error_")),
                   key=lambda k: int(k.rsplit("_", 1)[1]))
    if self.patience <= 0 or not steps or "corrupted_error" not in values:
      return None
    restored, corrupted = values[steps[-1]], values["corrupted_error"]
    alpha, grad = values.get("alpha", 1.0), values.get("grad_norm", 1.0)
    stuck = alpha <= self.ALPHA_FLOOR or grad <= self.GRAD_FLOOR
    self.count = self.count + 1 if stuck and restored >= corrupted * (1 - 1e-3) else 0
    if self.count < self.patience:
      return None
    return (f"the run has stalled for {self.count} log steps: alpha {alpha:.3g}, grad_norm "
            f"{grad:.3g}, restored error {restored:.4g} >= corrupted {corrupted:.4g}. It is "
            "not learning; lower optim.base_lr or change alpha.init (stall_log_steps=0 "
            "silences this)")


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

  def warn(self, msg: str) -> None:
    if not self.enabled:
      return
    logging.warning(msg)
    msg = f"WARNING: {msg}"
    if self.bar is not None:
      self.bar.write(msg)
    else:
      print(msg, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  s = int(seconds)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
