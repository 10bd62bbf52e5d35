"""A TFDS builder for Fashion-MNIST that reads local IDX files, offline.

TFDS's own ``fashion_mnist`` builder downloads and checks checksums; this one
reads the four gzipped IDX files that Debian's ``dataset-fashion-mnist`` package
installs (or any directory holding them) and writes ArrayRecord, so
``tfds.data_source`` reads it without TensorFlow.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ebm_pretrain import fs

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle boot"]


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) IDX file: magic 0x0000 | dtype 0x08 (uint8) | ndim, dims..."""
  with fs.path(path).open("rb") as raw:
    data = gzip.GzipFile(fileobj=raw).read() if str(path).endswith(".gz") else raw.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path}: not a uint8 IDX file (bad magic {data[:4]!r})")
  ndim = data[3]
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise ValueError(f"{path}: truncated or corrupt: the header says {dims} "
                     f"({int(np.prod(dims))} bytes) but it holds {body.size}")
  return body.reshape(dims)


def _read_checked(path: str) -> np.ndarray:
  try:
    return read_idx(path)
  except (OSError, EOFError) as e:  # a truncated gzip stream, an unreadable file
    raise ValueError(f"{path}: truncated or corrupt: {e}") from None


def check_files(idx_dir: str) -> None:
  """Reads all four files: FileNotFoundError naming the missing ones, or
  ValueError naming a truncated or corrupt one, before anything is built."""
  missing = [f for pair in FILES.values() for f in pair if not (fs.path(idx_dir) / f).exists()]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files missing in {idx_dir}: {', '.join(missing)}. "
        "On Debian: `apt-get install dataset-fashion-mnist`, or set "
        "--config.data.idx_dir to a directory holding them.")
  for split, files in FILES.items():
    images, labels = (_read_checked(os.path.join(idx_dir, f)) for f in files)
    if len(images) != len(labels):
      raise ValueError(f"{idx_dir}: {split} has {len(images)} images but {len(labels)} labels")


def png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class FashionMnistOffline(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (28x28 grayscale, 10 classes) from local IDX files."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, idx_dir: str = DEFAULT_IDX_DIR, **kwargs):
    self._idx_dir = idx_dir
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    check_files(self._idx_dir)
    return {split: self._generate_examples(split) for split in FILES}

  def _generate_examples(self, split):
    images_file, labels_file = FILES[split]
    images = read_idx(os.path.join(self._idx_dir, images_file))
    labels = read_idx(os.path.join(self._idx_dir, labels_file))
    if len(images) != len(labels):
      raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    for i, (image, label) in enumerate(zip(images, labels)):
      # Encoded here with Pillow: TFDS encodes numpy images with TensorFlow.
      yield i, {"image": png_bytes(image), "label": int(label)}


def prepare(data_dir: str, idx_dir: str = DEFAULT_IDX_DIR) -> FashionMnistOffline:
  """Builds the ArrayRecord files once (about 15 s); later calls only open them.
  The IDX files are checked first, and a build that fails leaves nothing behind
  that it created (TFDS's dataset and downloads folders). Processes that start
  together (parallel study streams, a host's processes) build it once."""
  def builder():
    return FashionMnistOffline(data_dir=data_dir, idx_dir=idx_dir, file_format="array_record")
  if builder().is_prepared():
    return builder()
  check_files(idx_dir)
  with _one_builder(data_dir):
    b = builder()  # (made again: another process may have built it while this one waited)
    if b.is_prepared():
      return b
    created = [p for p in (fs.path(data_dir) / FashionMnistOffline.name,
                           fs.path(data_dir) / "downloads") if not p.exists()]
    try:
      b.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except BaseException:
      for p in created:
        if p.exists():
          p.rmtree()
      raise
    return b


@contextlib.contextmanager
def _one_builder(data_dir: str):
  """An exclusive lock on ``data_dir`` while one process builds. Without it every
  process renames its own build onto the same folder: all but one fail, and a
  failing one's clean-up deleted the folder the winner had just made. (A cloud
  ``data_dir`` has no file locks: build it once before starting processes.)"""
  if fs.is_cloud(data_dir):
    yield
    return
  local = os.path.expanduser(data_dir)
  os.makedirs(local, exist_ok=True)
  with open(os.path.join(local, f".{FashionMnistOffline.name}.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
    yield
