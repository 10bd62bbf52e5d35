"""Sources and the grain pipeline."""
import gzip
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ebm_pretrain.data import fashion_mnist_offline, pipeline, sources
from helpers import fake_idx_dir, load_config, train_inprocess, write_idx


def test_offline_fashion_mnist_builder_reads_idx_files(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  rng = np.random.default_rng(0)
  train_images = rng.integers(0, 256, (12, 28, 28))
  for name, arr in [("train-images-idx3-ubyte.gz", train_images),
                    ("train-labels-idx1-ubyte.gz", np.arange(12) % 10),
                    ("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28))),
                    ("t10k-labels-idx1-ubyte.gz", np.arange(5))]:
    write_idx(str(idx / name), arr)
  np.testing.assert_array_equal(fashion_mnist_offline.read_idx(str(idx / "train-images-idx3-ubyte.gz")),
                                train_images)
  src = sources.fashion_mnist_source("train", str(tmp_path / "tfds"), str(idx))
  assert len(src) == 12
  labels = sorted(int(src[i]["label"]) for i in range(12))
  assert labels == sorted(np.arange(12) % 10)
  decoded = {int(src[i]["label"]): pipeline.decode_image(src[i]["image"], 1)[..., 0] for i in range(10)}
  np.testing.assert_array_equal(decoded[3], train_images[3])
  assert len(sources.fashion_mnist_source("test", str(tmp_path / "tfds"), str(idx))) == 5


def test_processes_started_together_build_the_dataset_once(tmp_path):
  # Parallel study streams (or a host's processes) on a fresh machine: each finds
  # no dataset and builds it. Unguarded, TFDS's rename fails in all but one, and
  # that one's clean-up deleted the dataset the others then tried to read.
  fake_idx_dir(tmp_path / "idx")
  start = time.time() + 10  # past every child's imports: they build together
  code = ("import sys, time; from ebm_pretrain.data import sources; "
          f"time.sleep(max(0, {start} - time.time())); "
          "print(len(sources.fashion_mnist_source('train', sys.argv[1], sys.argv[2])))")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tfds"),
                             str(tmp_path / "idx")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(3)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and out.split()[-1:] == ["300"], err[-2000:]
  assert len(sources.fashion_mnist_source("test", str(tmp_path / "tfds"), str(tmp_path / "idx"))) == 50


def test_missing_idx_files_are_a_clear_error(tmp_path):
  with pytest.raises(sources.DataSourceError, match="apt-get install dataset-fashion-mnist"):
    sources.fashion_mnist_source("train", str(tmp_path / "tfds"), str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="not a uint8 IDX file"):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
      f.write(b"\x01\x02\x03\x04")
    fashion_mnist_offline.read_idx(str(bad))


def _image_folder(root, with_corrupt=True):
  rng = np.random.default_rng(0)
  for cls in ("cats", "dogs"):
    os.makedirs(root / cls)
    for i in range(5):
      arr = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
      Image.fromarray(arr).save(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
  if with_corrupt:
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")


def test_folder_source_skips_and_counts_corrupt_images(tmp_path):
  _image_folder(tmp_path / "images")
  path = sources.prepare_folder(str(tmp_path / "images"), str(tmp_path / "cache"))
  src = sources.FolderSource(path)
  assert len(src) == 11 and sorted(set(src[i]["label"] for i in range(11))) == [0, 1]
  batches = list(pipeline.make_eval_dataset(src, batch_size=4, image_size=16, channels=3))
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.size == 12 and valid.sum() == 10  # 1 corrupt, 1 padding
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (12, 16, 16, 3) and images.dtype == np.uint8


def test_training_on_a_folder_reports_skipped_images(tmp_path, capsys):
  _image_folder(tmp_path / "images")
  wd = tmp_path / "wd"
  train_inprocess("tiny", str(wd), **{"data.source": "folder",
                                      "data.folder": str(tmp_path / "images"),
                                      "data.data_dir": str(tmp_path / "tfds"),
                                      "total_steps": 4, "batch_size": 8, "eval_examples": 0})
  import json
  records = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  # 32 images drawn from 11 files, one of them corrupt: it is seen at least once.
  assert sum(r["skipped_images"] for r in records) >= 1
  assert "skipped_images" in capsys.readouterr().out


def test_random_resized_crop_and_center_crop():
  rng = np.random.default_rng(0)
  arr = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  crops = [pipeline.random_resized_crop(arr, 24, rng) for _ in range(20)]
  assert all(c.shape == (24, 24, 3) and c.dtype == np.uint8 for c in crops)
  assert len({c.tobytes() for c in crops}) == 20
  flat = np.full((40, 60, 1), 7, np.uint8)
  np.testing.assert_array_equal(pipeline.random_resized_crop(flat, 8, rng), np.full((8, 8, 1), 7))
  grad = np.tile(np.arange(60, dtype=np.uint8)[None, :, None], (40, 1, 1))
  center = pipeline.center_crop(grad, 20, 20)
  assert center.shape == (20, 20, 1) and abs(int(center[0, 10, 0]) - 30) <= 2


def test_train_iterator_state_resumes_exactly():
  src = sources.SyntheticSource(50, 16, 3)
  kw = dict(global_batch=8, num_batches=12, image_size=16, channels=3, seed=1)
  it = iter(pipeline.make_train_dataset(src, **kw))
  for _ in range(5):
    next(it)
  state = it.get_state()
  rest = [b["image"] for b in it]
  resumed = iter(pipeline.make_train_dataset(src, **kw))
  resumed.set_state(state)
  again = [b["image"] for b in resumed]
  assert len(rest) == 7
  for a, b in zip(rest, again):
    np.testing.assert_array_equal(a, b)


def test_worker_processes_yield_the_same_batches_in_process():
  # Without an absl app (the study, a notebook): grain's workers need its flags.
  src = sources.SyntheticSource(40, 16, 3)
  kw = dict(global_batch=8, num_batches=5, image_size=16, channels=3, seed=2)
  here = list(pipeline.make_train_dataset(src, **kw))
  workers = list(pipeline.make_train_dataset(src, num_workers=2, **kw))
  assert len(workers) == len(here) == 5
  for a, b in zip(here, workers):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  ev = dict(batch_size=8, image_size=16, channels=3, num_examples=20)
  np.testing.assert_array_equal(
      np.concatenate([b["image"] for b in pipeline.make_eval_dataset(src, num_workers=2, **ev)]),
      np.concatenate([b["image"] for b in pipeline.make_eval_dataset(src, **ev)]))


@pytest.mark.skipif(not os.path.isdir(fashion_mnist_offline.DEFAULT_IDX_DIR),
                    reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_demo_config_runs_on_real_fashion_mnist(tmp_path):
  _, last = train_inprocess("demo", str(tmp_path / "wd"), total_steps=2, eval_examples=200,
                            log_every=1, **{"data.data_dir": str(tmp_path / "tfds")})
  assert last["eval/psnr_step_2"] > 0 and np.isfinite(last["loss"])


def test_validation_holdout_is_disjoint_from_training_and_from_test():
  c = load_config("tiny")
  c.data.num_examples, c.data.holdout = 40, 10
  train_src = sources.get_train_source(c.data)
  val = sources.get_source(c.data, sources.HOLDOUT)
  test = sources.get_source(c.data, c.data.eval_split)
  assert (len(train_src), len(val)) == (30, 10)
  key = lambda e: np.asarray(e["image"]).tobytes()
  train_keys = {key(train_src[i]) for i in range(len(train_src))}
  val_keys = {key(val[i]) for i in range(len(val))}
  test_keys = {key(test[i]) for i in range(len(test))}
  assert not train_keys & val_keys and not val_keys & test_keys and len(val_keys) == 10
  # The same images whatever the run's seeds or label fraction (fine-tuning on 10%
  # of the labels still never sees a validation image).
  c.seed, c.data.subset_seed, c.data.train_fraction = 5, 3, 0.5
  small = sources.get_train_source(c.data)
  assert len(small) == 15 and {key(small[i]) for i in range(15)} <= train_keys
  assert {key(e) for e in sources.get_source(c.data, "holdout")} == val_keys
  c.data.holdout = 0
  with pytest.raises(sources.DataSourceError, match="needs data.holdout > 0"):
    sources.get_source(c.data, "holdout")


def test_a_registered_data_source_is_read_by_name(monkeypatch):
  """``sources.register``: a plug-in's own data, named by ``config.data.source``."""
  from ebm_pretrain.errors import ConfigError
  monkeypatch.setattr(sources, "SOURCES", sources.SOURCES.copy())
  rows = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i % 2} for i in range(6)]
  sources.register("my_rows", lambda data_cfg, split: rows if split == "train" else rows[:2])
  d = load_config("tiny").data
  d.source = "my_rows"
  assert len(sources.get_source(d, "train")) == 6 and len(sources.get_source(d, "test")) == 2
  d.holdout = 2
  assert len(sources.get_source(d, sources.HOLDOUT)) == 2
  assert len(sources.get_train_source(d)) == 4
  d.source = "nope"
  with pytest.raises(ConfigError, match=r"config.data.source: unknown source 'nope'; valid: "
                     r"fashion_mnist_offline, folder, garment_scenes, my_rows, synthetic, tfds"):
    sources.get_source(d, "train")
