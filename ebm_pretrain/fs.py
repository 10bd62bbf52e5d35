"""The one path layer: every file the program reads or writes (workdir, init,
data_dir, idx_dir, image folders) goes through ``etils.epath``, as Orbax and TFDS
do, so ``gs://`` (and other fsspec schemes) work wherever a local path does.

Cloud object stores cannot append: :class:`AppendFile` keeps a log file's whole
text and rewrites the object on flush (at most every ``min_interval_s``, and
always on ``flush(force=True)`` and ``close``), which is what metrics.jsonl and
TensorBoard's event files need.
"""
from __future__ import annotations

import io
import os
import time
import uuid

from etils import epath

CLOUD_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_cloud(path) -> bool:
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def path(p) -> epath.Path:
  """``p`` as an ``epath.Path``: cloud URIs as they are, local paths absolute
  with ``~`` expanded."""
  p = os.fspath(p)
  if is_cloud(p):
    return epath.Path(p)
  return epath.Path(os.path.abspath(os.path.expanduser(p)))


def name(p) -> str:
  """The canonical string of ``p`` (what :func:`path` makes of it)."""
  return os.fspath(path(p))


def check_backend(p) -> None:
  """Raises OSError naming the missing package when a cloud path has no
  filesystem to reach it (epath uses TensorFlow's gfile or fsspec + gcsfs)."""
  p = os.fspath(p)
  if not p.startswith("gs://"):
    return
  import fsspec
  try:
    fsspec.get_filesystem_class("gs")
    return
  except (ImportError, ValueError):
    pass
  import importlib.util
  if importlib.util.find_spec("tensorflow") is None:
    raise OSError("gs:// paths need gcsfs (pip install 'ebm_pretrain[gcs]') or "
                  "TensorFlow's gfile; neither is installed")


def write_text(p, text: str) -> None:
  """Writes the whole file so that a reader never sees half of it (see
  :func:`write_bytes`)."""
  write_bytes(p, text.encode())


def write_bytes(p, data: bytes) -> None:
  """Writes the whole file so that a reader never sees half of it: a local file
  through a temporary file and a rename (the temporary file removed if the
  write fails, say for lack of space); a cloud object is replaced whole by the
  store itself."""
  p = path(p)
  if is_cloud(p):
    p.write_bytes(data)
    return
  tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, p)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


class AppendFile:
  """A text or binary file opened for appending, local or in the cloud."""

  def __init__(self, p, binary: bool = False, min_interval_s: float = 30.0):
    self.path, self.binary = path(p), binary
    self.min_interval_s = min_interval_s
    self._local = None
    if not is_cloud(self.path):
      self._local = open(self.path, "ab" if binary else "a", buffering=-1 if binary else 1)
      return
    old = self.path.read_bytes() if self.path.exists() else b""
    self._buffer = io.BytesIO()
    self._buffer.write(old)
    self._dirty, self._last = False, time.monotonic()

  def write(self, data) -> None:
    if self._local is not None:
      self._local.write(data)
      return
    self._buffer.write(data if self.binary else data.encode())
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._local is not None:
      self._local.flush()
      return
    now = time.monotonic()
    if self._dirty and (force or now - self._last >= self.min_interval_s):
      self.path.write_bytes(self._buffer.getvalue())
      self._dirty, self._last = False, now

  def close(self) -> None:
    if self._local is not None:
      self._local.close()
      return
    self.flush(force=True)


class _TensorBoardFile:
  """tensorboardX's record-writer interface (write/flush/close) over an
  :class:`AppendFile`."""

  def __init__(self, p):
    self._file = AppendFile(p, binary=True)

  def write(self, data: bytes) -> None:
    self._file.write(data)

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class _TensorBoardFactory:
  def directory_check(self, p: str) -> None:
    path(p).mkdir(parents=True, exist_ok=True)

  def open(self, p: str) -> _TensorBoardFile:
    return _TensorBoardFile(p)


def _import_tensorboardx() -> None:
  """Imports tensorboardX with torch hidden, unless torch is loaded already:
  its writer module imports torch wherever it is installed (timm's, for the
  export) only to annotate types, which slowed every run's start-up.
  Afterwards ``import torch`` works as before."""
  import sys
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None  # (an import of torch raises ImportError meanwhile)
  try:
    import tensorboardX  # noqa: F401
  finally:
    del sys.modules["torch"]


def register_tensorboard() -> None:
  """Routes tensorboardX's cloud event files through this path layer."""
  _import_tensorboardx()
  from tensorboardX import record_writer
  for scheme in CLOUD_SCHEMES:
    record_writer.register_writer_factory(scheme.split(":")[0], _TensorBoardFactory())
