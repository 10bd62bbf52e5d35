"""Random-access data sources. Each yields ``{"image": bytes | uint8 array, "label": int}``;
images are decoded later, in the pipeline, where a bad one can be skipped and counted.

  tfds       any TFDS dataset already prepared in ``data_dir`` (local or gs://),
             e.g. ``imagenet2012``; read with ``tfds.data_source``, no TensorFlow.
  fashion_mnist_offline
             Fashion-MNIST from local IDX files (Debian's dataset-fashion-mnist).
  folder     a local folder of JPEG/PNG images (class subfolders optional),
             prepared once into ArrayRecord.
  synthetic  deterministic procedural images, for tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

import msgpack
import numpy as np

from ebm_pretrain import fs
from ebm_pretrain.registry import Registry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class DataSourceError(RuntimeError):
  """The data cannot be found or opened; the message says how to fix it."""


IMAGENET_HELP = """\
TFDS dataset 'imagenet2012' is not prepared in data_dir={data_dir!r}.
ImageNet cannot be downloaded automatically. To prepare it once:
  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
     https://image-net.org (an account is needed).
  2. Put both files in a manual directory, e.g. ~/tensorflow_datasets/downloads/manual/
  3. Build the ArrayRecord version (this step needs TensorFlow, on any machine):
       pip install tensorflow tensorflow-datasets
       tfds build imagenet2012 --data_dir={data_dir} --file_format=array_record \\
         --manual_dir=~/tensorflow_datasets/downloads/manual
  4. Run again with --config.data.data_dir={data_dir} (a local path or gs://bucket/path).
"""


ADE20K_HELP = """\
ADE20K (TFDS 'scene_parse150') is not prepared in data_dir={data_dir}.
This program never downloads data. Prepare it once where you can download:
  1. pip install tensorflow-datasets tensorflow   (for the build step only)
  2. tfds build scene_parse150 --data_dir={data_dir} --file_format=array_record
  3. Run again with --config.data.data_dir={data_dir} (a local path or gs://bucket/path).
"""


# ----------------------------------------------------------------------------
# TFDS.
# ----------------------------------------------------------------------------
def tfds_source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    # TFDS's own message lists every dataset it knows: hundreds of lines.
    close = re.search(r"Did you mean: \S+ -> (\S+) \?", str(e))
    hint = f"; did you mean {close.group(1)!r}?" if close else ""
    raise DataSourceError(f"data.name={name!r} is not a TFDS dataset{hint}") from None
  except Exception as e:  # unreadable dir
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataSourceError(f"cannot open TFDS dataset {name!r} in data_dir={data_dir!r}: "
                          f"{first}") from None
  base = name.split(":")[0]  # without the version
  if not builder.is_prepared():
    if base == "imagenet2012":
      raise DataSourceError(IMAGENET_HELP.format(data_dir=data_dir or "~/tensorflow_datasets"))
    if base == "scene_parse150":
      raise DataSourceError(ADE20K_HELP.format(data_dir=data_dir or "~/tensorflow_datasets"))
    raise DataSourceError(
        f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}. Prepare it "
        f"once with `tfds build {name} --data_dir=DIR --file_format=array_record` and "
        "pass --config.data.data_dir=DIR. This program never downloads data.")
  source = _as_source(builder, split)
  if base == "scene_parse150":  # ADE20K: image + label map
    from ebm_pretrain.data.segmentation import SceneParse
    return SceneParse(source)
  return source


def _as_source(builder, split: str):
  import tensorflow_datasets as tfds
  try:
    return builder.as_data_source(split=split,
                                  decoders={"image": tfds.decode.SkipDecoding()})
  except Exception as e:
    raise DataSourceError(f"cannot read split {split!r} of {builder.name}: {e}. Was it "
                          "prepared with --file_format=array_record?") from e


def fashion_mnist_source(split: str, data_dir: str, idx_dir: str | None = None):
  from ebm_pretrain.data import fashion_mnist_offline
  idx_dir = idx_dir or fashion_mnist_offline.DEFAULT_IDX_DIR
  try:
    builder = fashion_mnist_offline.prepare(data_dir, idx_dir)
  except (FileNotFoundError, ValueError) as e:
    raise DataSourceError(str(e)) from None
  return _as_source(builder, split)


# ----------------------------------------------------------------------------
# A local image folder, prepared once into ArrayRecord.
# ----------------------------------------------------------------------------
def _list_folder(folder: str) -> tuple[list, list[int], list[str]]:
  root = fs.path(folder)
  classes = sorted(d.name for d in root.iterdir() if d.is_dir())
  files, labels = [], []
  for label, sub in enumerate(classes or [""]):
    for dirpath, _, names in sorted(root.joinpath(sub).walk(), key=lambda w: os.fspath(w[0])):
      for n in sorted(names):
        if n.endswith(IMAGE_SUFFIXES):
          files.append(dirpath / n)
          labels.append(label if classes else 0)
  return files, labels, classes


def prepare_folder(folder: str, out_dir: str) -> str:
  """Writes ``out_dir/images.array_record`` (msgpack records of the raw file bytes
  and the label) and ``classes.json``; returns the record path. Atomic: a
  half-written file is never used. Records are msgpack, never pickle."""
  from array_record.python.array_record_module import ArrayRecordWriter
  path = os.path.join(out_dir, "images.array_record")
  if os.path.exists(path):
    return path
  if not fs.path(folder).is_dir():
    raise DataSourceError(f"image folder {folder!r} does not exist")
  files, labels, classes = _list_folder(folder)
  if not files:
    raise DataSourceError(f"no JPEG or PNG images under {folder!r}")
  os.makedirs(out_dir, exist_ok=True)
  tmp = path + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for f, label in zip(files, labels):
    writer.write(msgpack.packb({"image": f.read_bytes(), "label": label}))
  writer.close()
  with open(os.path.join(out_dir, "classes.json"), "w") as fh:
    json.dump(classes, fh)
  os.replace(tmp, path)
  return path


class FolderSource:
  """Random access over the ArrayRecord made by :func:`prepare_folder`."""

  def __init__(self, record_path: str):
    import grain
    self._records = grain.sources.ArrayRecordDataSource([record_path])

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return msgpack.unpackb(self._records[i])


# ----------------------------------------------------------------------------
# Synthetic.
# ----------------------------------------------------------------------------
class SyntheticSource:
  """Procedural images (a disc on a colour ramp), the same for the same index.
  The label is which quadrant holds the disc centre, so it is learnable."""

  def __init__(self, num_examples: int = 1024, image_size: int = 32, channels: int = 3,
               seed: int = 0):
    self.n, self.size, self.channels, self.seed = num_examples, image_size, channels, seed

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict[str, Any]:
    rng = np.random.default_rng([self.seed, int(i)])
    s = self.size
    yy, xx = np.mgrid[:s, :s] / s
    cy, cx = rng.uniform(0.2, 0.8, 2)
    r = rng.uniform(0.1, 0.3)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    ramp = rng.uniform(0, 255, self.channels) * yy[..., None]
    colour = rng.uniform(0, 255, self.channels)
    image = np.where(disc[..., None], colour, ramp).astype(np.uint8)
    return {"image": image, "label": int(cy > 0.5) * 2 + int(cx > 0.5)}


# ----------------------------------------------------------------------------
# A fixed random subset (semi-supervised fine-tuning: 1% / 10% of the labels).
# ----------------------------------------------------------------------------
class Indexed:
  """The examples ``indices`` of ``source``, in that order."""

  def __init__(self, source: Sequence[dict], indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.source[int(self.indices[i])]


class Subset(Indexed):
  """The first ``round(fraction * len(source))`` examples of a seeded permutation
  of ``source``: the same subset for the same (source, fraction, seed)."""

  def __init__(self, source: Sequence[dict], fraction: float, seed: int = 0):
    if not 0 < fraction <= 1:
      raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * len(source))))
    super().__init__(source, np.sort(np.random.default_rng(seed).permutation(len(source))[:n]))


# The validation split: ``data.holdout`` examples of the training split, the same
# ones for every run on that data whatever its seeds (pretraining and fine-tuning
# must hold out the same images), never trained on. ``data.eval_split =
# "holdout"`` evaluates on them.
HOLDOUT = "holdout"
# The frozen-feature evaluators' training bank (kNN, linear probe): the training
# split without the holdout, whatever split is evaluated.
BANK = "bank"
_HOLDOUT_SEED = 20261130


def holdout_indices(n: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
  """(held-out, remaining) indices of a split of ``n`` examples, each sorted."""
  if not 0 <= holdout < n:
    raise DataSourceError(f"data.holdout={holdout}: must be in [0, {n}) for a training split "
                          f"of {n} examples")
  perm = np.random.default_rng(_HOLDOUT_SEED).permutation(n)
  return np.sort(perm[:holdout]), np.sort(perm[holdout:])


# ----------------------------------------------------------------------------
# From a config.
# ----------------------------------------------------------------------------
def get_train_source(data_cfg) -> Sequence[dict]:
  """The training split without the ``data.holdout`` validation examples, cut to
  ``data.train_fraction`` of the rest."""
  source = get_source(data_cfg, BANK)
  fraction = data_cfg.train_fraction
  return source if fraction == 1.0 else Subset(source, fraction, data_cfg.subset_seed)


def get_source(data_cfg, split: str) -> Sequence[dict]:
  """A split of the configured data; ``"holdout"``: the validation examples held
  out of the training split (``data.holdout``); ``"bank"``: the training split
  without them (what kNN and the probe train on)."""
  if split == BANK:
    train = get_source(data_cfg, data_cfg.split)
    if not data_cfg.holdout:
      return train
    return Indexed(train, holdout_indices(len(train), data_cfg.holdout)[1])
  if split == HOLDOUT:
    if not data_cfg.holdout:
      raise DataSourceError("data.eval_split='holdout' needs data.holdout > 0 (how many "
                            "training examples to hold out for validation)")
    train = get_source(data_cfg, data_cfg.split)
    return Indexed(train, holdout_indices(len(train), data_cfg.holdout)[0])
  return SOURCES.get(data_cfg.source)(data_cfg, split)


def _tfds(data_cfg, split: str):
  return tfds_source(data_cfg.name, split, data_cfg.data_dir or None)


def _fashion_mnist(data_cfg, split: str):
  return fashion_mnist_source(split, _cache_dir(data_cfg), data_cfg.idx_dir or None)


def _folder(data_cfg, split: str):
  folder = data_cfg.folder if split == "train" else data_cfg.eval_folder or data_cfg.folder
  digest = hashlib.sha1(fs.name(folder).encode()).hexdigest()[:12]
  # ArrayRecord writes local files: a cloud data_dir keeps this cache locally.
  cache = _cache_dir(data_cfg)
  cache = os.path.expanduser("~/tensorflow_datasets") if fs.is_cloud(cache) else cache
  return FolderSource(prepare_folder(folder, os.path.join(cache, f"folder_{digest}")))


def _garment_scenes(data_cfg, split: str):
  """The offline segmentation demo (data/segmentation.py): training scenes from
  the training garments, any other split's from the test ones."""
  from ebm_pretrain.data.segmentation import GarmentScenes
  garments = fashion_mnist_source("train" if split == "train" else "test",
                                  _cache_dir(data_cfg), data_cfg.idx_dir or None)
  return GarmentScenes(garments, data_cfg.num_examples or len(garments), data_cfg.scene_size,
                       data_cfg.channels, seed=0 if split == "train" else 1)


def _synthetic(data_cfg, split: str):
  return SyntheticSource(data_cfg.num_examples or 1024, data_cfg.image_size,
                         data_cfg.channels, seed=0 if split == "train" else 1)


# ``config.data.source`` -> a reader ``(data_cfg, split) -> a sequence of
# {"image", "label"}``; ``register`` adds one (a plug-in's own data).
SOURCES = Registry("data.source", {
    "tfds": _tfds, "fashion_mnist_offline": _fashion_mnist, "folder": _folder,
    "garment_scenes": _garment_scenes, "synthetic": _synthetic}, kind="source")


def register(name: str, reader) -> None:
  """Makes ``config.data.source = name`` read ``reader(data_cfg, split)``."""
  SOURCES.register(name, reader)


def _cache_dir(data_cfg) -> str:
  return fs.name(data_cfg.data_dir or "~/tensorflow_datasets")
