"""No evaluated image is in a bank or a training subset: kNN and the linear
probe train on the training split without the holdout (``sources.BANK``),
fine-tuning subsets come from the same, whatever split is evaluated; checked by
index and by image content. A kNN of noise images with random labels is at
chance on the holdout (with the holdout in its bank it found every image: 1.0)."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from ebm_pretrain import knn as knn_cli, pretrained
from ebm_pretrain.data import sources
from ebm_pretrain.evaluators import knn, linear_probe
from helpers import load_config, train_inprocess


def _noise_folder(root, n, seed):
  """n random-noise 16px images in 10 class folders, labels drawn at random."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    d = root / f"c{int(rng.integers(10))}"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(d / f"{seed}_{i:04d}.png")


def _data(tmp_path, **kw):
  d = load_config("tiny").data
  d.source, d.folder, d.data_dir = "folder", str(tmp_path / "train"), str(tmp_path / "tfds")
  for k, v in kw.items():
    d[k] = v
  return d


def _hashes(source) -> list[str]:
  return [hashlib.sha256(source[i]["image"]).hexdigest() for i in range(len(source))]


@pytest.mark.parametrize("eval_split", ["holdout", "test"])
def test_no_evaluated_image_is_in_the_bank_or_a_training_subset(tmp_path, eval_split):
  _noise_folder(tmp_path / "train", 120, seed=0)
  _noise_folder(tmp_path / "eval", 30, seed=1)  # "test" on a folder: its eval folder
  d = _data(tmp_path, holdout=40, eval_split=eval_split, eval_folder=str(tmp_path / "eval"),
            train_fraction=0.5)
  bank, evaluated = sources.get_source(d, sources.BANK), sources.get_source(d, eval_split)
  subset = sources.get_train_source(d)
  assert len(bank) == 80 and len(evaluated) == (40 if eval_split == "holdout" else 30)
  assert len(subset) == 40
  # By index (the holdout is a set of indices of the training split) ...
  held, rest = sources.holdout_indices(120, 40)
  assert set(held).isdisjoint(rest) and len(held) + len(rest) == 120
  np.testing.assert_array_equal(bank.indices, rest)
  # ... and by content.
  seen = set(_hashes(evaluated))
  assert seen.isdisjoint(_hashes(bank)) and seen.isdisjoint(_hashes(subset))


@pytest.mark.parametrize("module,cls", [(knn, knn.KNN), (linear_probe, linear_probe.LinearProbe)])
def test_knn_and_the_probe_train_on_the_bank_whatever_the_eval_split(monkeypatch, module, cls):
  asked = []

  def features(ev, params, model_state, split, examples):
    asked.append(split)
    rng = np.random.default_rng(len(asked))
    return rng.normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2
  monkeypatch.setattr(module, "features", features)
  ev = object.__new__(cls)
  ev.name, ev.spec = "x", dict(cls.options, split="test", examples=20, steps=5)
  ev.run(None, None)
  assert asked == [sources.BANK, "test"]


def test_knn_of_noise_with_random_labels_is_at_chance_on_the_holdout(tmp_path):
  _noise_folder(tmp_path / "train", 400, seed=0)
  wd = str(tmp_path / "wd")
  train_inprocess("tiny", wd, **{"data.source": "folder", "data.folder": str(tmp_path / "train"),
                                 "data.data_dir": str(tmp_path / "tfds"), "data.holdout": 100,
                                 "data.eval_split": "holdout", "total_steps": 2,
                                 "eval_examples": 0})
  top1 = knn_cli.evaluate(pretrained.load(wd))
  assert top1 < 0.3, top1  # chance is 0.1; each holdout image in the bank gave 1.0


def test_knn_votes_as_a_numpy_recomputation_does():
  """DINO's weighted kNN written out in numpy: cosine similarity, the k nearest
  vote with weight exp(sim / T)."""
  rng = np.random.default_rng(0)
  train, test = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
  labels = rng.integers(0, 4, 60)
  k, t = 7, 0.07
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = unit(test) @ unit(train).T
  want = []
  for row in sim:
    top = np.argsort(-row)[:k]
    votes = np.zeros(4)
    np.add.at(votes, labels[top], np.exp(row[top] / t))
    want.append(int(np.argmax(votes)))
  got = knn.knn_predict(train, labels, test, num_classes=4, k=k, temperature=t)
  np.testing.assert_array_equal(got, want)
