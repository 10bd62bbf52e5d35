"""Segmentation model (UperNet on each family's feature pyramid): shapes, strides,
the pooling and resizing against PyTorch's, and that the backbones' parameters
are the ones a pretraining checkpoint has."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import models
from ebm_pretrain.models import upernet, vit

FAMILIES = {"vit": ("mu/4", 32), "convnext": ("mu", 32), "swin": ("mu", 32)}


def _backbone(family, **kw):
  variant, _ = FAMILIES[family]
  return models.get_backbone(family, variant, dtype=jnp.float32, param_dtype=jnp.float32, **kw)


def test_pyramid_blocks_are_beit_and_mae_out_indices():
  assert vit.pyramid_blocks(12) == (3, 5, 7, 11)
  assert vit.pyramid_blocks(24) == (7, 11, 15, 23)
  assert vit.pyramid_blocks(4) == (0, 1, 2, 3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pyramid_levels_and_the_backbones_parameters(family):
  size = FAMILIES[family][1]
  backbone = _backbone(family)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  pooled_params = backbone.init(jax.random.key(1), x)["params"]
  levels = backbone.apply({"params": pooled_params}, x, pyramid=True)
  strides = [size // lv.shape[1] for lv in levels]
  if family == "vit":  # four blocks' tokens at the patch stride
    assert strides == [4] * 4 and len({lv.shape for lv in levels}) == 1
    # The last level is the last block's output, before encoder_norm.
    assert not np.allclose(levels[-1].std(-1), 1.0, atol=1e-2)
  else:  # one map per stage, each twice coarser
    assert strides == [strides[0] * 2 ** i for i in range(len(levels))] and len(levels) >= 2
  # The pyramid reads only parameters that the pretrained (pooled) backbone has.
  pyr_params = backbone.init(jax.random.key(1), x, pyramid=True)["params"]
  flat = lambda t: {"/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(t)}
  assert flat(pyr_params) <= flat(pooled_params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_upernet_logits_have_the_input_size_and_train(family):
  size = FAMILIES[family][1]
  model = upernet.SegmentationModel(_backbone(family), num_classes=5, channels=16,
                                    aux_channels=8)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  # Compiled whole (op by op, each of the backbone's operations is a compile).
  variables = jax.jit(model.init)(jax.random.key(1), x)
  apply = jax.jit(model.apply, static_argnames=("aux",))
  assert apply(variables, x).shape == (2, size, size, 5)
  main, aux = apply(variables, x, aux=True)
  assert aux.shape == main.shape and not np.allclose(aux, main)
  labels = jax.random.randint(jax.random.key(2), (2, size, size), 0, 5)

  def loss(params):
    (logits, aux), state = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, aux=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
    ce = lambda z: -jnp.take_along_axis(jax.nn.log_softmax(z), labels[..., None], -1).mean()
    return ce(logits) + 0.4 * ce(aux), state
  (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(value)
  # Every parameter, backbone to classifier, gets a gradient; BatchNorm statistics move.
  norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads)
  for head in ("decode_head", "auxiliary_head"):
    assert all(v > 0 for v in jax.tree.leaves(norms[head])), norms[head]
  assert float(sum(jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(),
                                                grads["backbone"])))) > 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"],
                       variables["batch_stats"])
  assert all(jax.tree.leaves(moved))


def test_pooling_and_resizing_match_pytorch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  for h, w in ((16, 16), (7, 10)):
    x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for s in (1, 2, 3, 6):
      ours = np.asarray(upernet.adaptive_avg_pool(jnp.asarray(x), s))
      np.testing.assert_allclose(ours, F.adaptive_avg_pool2d(t, s).numpy().transpose(0, 2, 3, 1),
                                 rtol=1e-5, atol=1e-6)
    for hw in ((32, 32), (4 * h, 3 * w)):
      ours = np.asarray(upernet.resize_bilinear(jnp.asarray(x), hw))
      ref = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
      np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def _class_image(channels):
  """A 48 x 80 label map of 8 x 8 blocks in classes {0, 3, 7} (far apart, so an
  interpolated label would show), and an image whose pixels encode their class."""
  from ebm_pretrain.data import segmentation
  rng = np.random.default_rng(0)
  blocks = rng.choice(np.array([0, 3, 7], np.uint8), size=(6, 10))
  mask = np.kron(blocks, np.ones((8, 8), np.uint8))
  mask[:8, :8] = segmentation.IGNORE  # an unlabeled patch
  value = np.where(mask == segmentation.IGNORE, 250, mask.astype(np.int32) * 30 + 20)
  image = np.repeat(value[..., None], channels, -1).astype(np.uint8)
  return image, mask


@pytest.mark.parametrize("channels", [1, 3])
def test_the_label_map_stays_aligned_with_the_image_through_every_augmentation(channels):
  from ebm_pretrain.data import segmentation as seg
  image, mask = _class_image(channels)
  aug = seg.SegAugment(photometric=False)
  seen_sizes, flips = set(), 0
  for seed in range(40):
    out_img, out_mask = seg.augment_pair(image, mask, 32, np.random.default_rng(seed), aug)
    assert out_img.shape == (32, 32, channels) and out_mask.shape == (32, 32)
    assert set(np.unique(out_mask)) <= {0, 3, 7, seg.IGNORE}  # nearest: no invented classes
    # Where the labels are uniform around a pixel, the image there encodes the same class.
    m = out_mask.astype(np.int32)
    same = np.ones_like(m, bool)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        same &= np.roll(m, (dy, dx), (0, 1)) == m
    same[[0, -1]] = same[:, [0, -1]] = False
    labelled = same & (m != seg.IGNORE)
    decoded = np.rint((out_img[..., 0].astype(np.float32) - 20) / 30)
    assert labelled.sum() > 0 and np.all(decoded[labelled] == m[labelled]), seed
    padded = same & (out_img[..., 0] == 0)
    assert np.all(m[padded] == seg.IGNORE)
    valid = m != seg.IGNORE
    seen_sizes.add(int(valid.any(1).sum()))
    # The unlabeled patch (image 250) is at the left before a flip; it shows where it landed.
    cols = np.where((out_img[..., 0] == 250).any(0))[0]
    flips += int(len(cols) > 0 and cols.min() > 16)
  assert len(seen_sizes) > 3  # the random rescale and crop did vary
  assert flips > 0


def test_photometric_distortion_changes_pixels_never_labels():
  from ebm_pretrain.data import segmentation as seg
  image, mask = _class_image(3)
  changed = 0
  for seed in range(10):
    a = seg.augment_pair(image, mask, 32, np.random.default_rng(seed), seg.SegAugment())
    b = seg.augment_pair(image, mask, 32, np.random.default_rng(seed),
                         seg.SegAugment(photometric=False))
    np.testing.assert_array_equal(a[1], b[1])
    changed += int(not np.array_equal(a[0], b[0]))
  assert changed > 0


def test_the_configs_segmentation_augmentation_reaches_the_decoder():
  """``config.augment.seg`` (and the shared ``augment.flip``) is what the training
  decode applies; values that cannot work are refused naming the field."""
  import io
  from PIL import Image
  from ebm_pretrain import recipes
  from ebm_pretrain.data import pipeline, segmentation as seg
  from ebm_pretrain.errors import ConfigError
  from ebm_pretrain.objectives.segmentation import SegmentationObjective
  image, mask = _class_image(3)
  png = io.BytesIO()
  Image.fromarray(image).save(png, format="PNG")
  element = {"image": png.getvalue(), "segmentation": mask}
  c = recipes.segmentation_defaults()
  c.augment.flip = False
  c.augment.seg.update(ratio_range=(1.0, 1.0), photometric=False, cat_max_ratio=1.0)
  augment = pipeline.Augment.from_config(c.augment)
  want = seg.SegAugment(ratio_range=(1.0, 1.0), flip=False, photometric=False, cat_max_ratio=1.0)
  assert augment.segmentation == want
  decoded = [pipeline.decode_augment(element, image_size=32, channels=3, train=True,
                                     rng=np.random.default_rng(s), augment=augment)
             for s in range(6)]
  for s, d in enumerate(decoded):
    ref = seg.augment_pair(image, mask, 32, np.random.default_rng(s), want)
    np.testing.assert_array_equal(d["image"], ref[0])
    np.testing.assert_array_equal(d["mask"], ref[1])
  default = [pipeline.decode_augment(element, image_size=32, channels=3, train=True,
                                     rng=np.random.default_rng(s), augment=pipeline.Augment())
             for s in range(6)]
  assert any(not np.array_equal(a["mask"], b["mask"]) for a, b in zip(decoded, default))
  for field, value in (("ratio_range", (2.0, 0.5)), ("cat_max_ratio", 0.0),
                       ("base_aspect", 0.5)):
    bad = recipes.segmentation_defaults()
    bad.augment.seg[field] = value
    with pytest.raises(ConfigError, match=f"augment.seg.{field}"):
      SegmentationObjective.check(bad)


def test_ade20k_labels_reduce_zero_to_ignore():
  from ebm_pretrain.data import segmentation as seg
  raw = np.array([[0, 1, 150]], np.uint8)
  np.testing.assert_array_equal(seg.decode_mask(raw, reduce_zero_label=True), [[255, 0, 149]])


def test_garment_scenes_are_deterministic_and_their_masks_cover_the_garments():
  from ebm_pretrain.data import segmentation as seg
  yy, xx = np.mgrid[:28, :28]
  disc = np.where((yy - 14) ** 2 + (xx - 14) ** 2 < 100, 200, 0).astype(np.uint8)
  garments = [{"image": disc, "label": k} for k in range(10)]
  scenes = seg.GarmentScenes(garments, length=20, size=48, seed=3)
  a, b = scenes[5], scenes[5]
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
  assert not np.array_equal(scenes[6]["segmentation"], a["segmentation"])
  classes = set()
  for i in range(len(scenes)):
    s = scenes[i]
    m = s["segmentation"]
    assert s["image"].shape == (48, 48, 1) and m.shape == (48, 48) and m.max() <= 10
    assert np.all(s["image"][..., 0][m > 0] > 30)  # a garment pixel is its silhouette
    classes |= set(np.unique(m).tolist())
  assert 0 in classes and len(classes) > 4
  with pytest.raises(IndexError):
    scenes[20]


def test_confusion_matrix_miou_equals_a_direct_numpy_computation():
  from ebm_pretrain.evaluators import miou
  rng = np.random.default_rng(0)
  k = 6
  labels = rng.integers(0, k, (4, 9, 11)).astype(np.uint8)
  labels[0, :3] = 255  # unlabeled
  labels[labels == 5] = 2  # class 5 never labelled ...
  preds = rng.integers(0, k - 1, (4, 9, 11))  # ... nor predicted: left out of the mean
  weights = (labels != 255).astype(np.float32)
  matrix = miou.confusion(jnp.asarray(labels), jnp.asarray(preds), jnp.asarray(weights), k)
  s = miou.scores(matrix)
  keep = labels != 255
  ious = []
  for c in range(k):
    inter = np.sum((labels == c) & (preds == c) & keep)
    union = np.sum(((labels == c) | (preds == c)) & keep)
    if union:
      ious.append(inter / union)
  assert s["miou"] == pytest.approx(np.mean(ious), rel=1e-6)
  assert s["pixel_accuracy"] == pytest.approx(np.sum((labels == preds) & keep) / keep.sum())
  assert np.isnan(s["iou"][5]) and np.sum(np.asarray(matrix)) == keep.sum()


def test_tiny_segmentation_run_writes_a_checkpoint_and_an_miou(tmp_path):
  import json
  import os
  from helpers import train_inprocess
  state, _ = train_inprocess("tiny_seg", str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  evals = [r for r in records if "eval/miou" in r]
  assert evals and 0 <= evals[-1]["eval/miou"] <= 1
  assert 0 <= evals[-1]["eval/pixel_accuracy"] <= 1
  assert os.listdir(tmp_path / "checkpoints") and os.listdir(tmp_path / "best")
  assert "batch_stats" in state["model_state"]
  pngs = sorted(os.listdir(tmp_path / "images"))
  assert pngs and all(p.startswith("segmentation_") for p in pngs)  # image | prediction | truth


@pytest.mark.parametrize("config", ["seg_upernet_vit_b", "seg_upernet_convnext_t",
                                    "seg_upernet_swin_t"])
def test_ade20k_configs_validate_and_trace_at_512(config):
  """The ImageNet-scale configs as users run them: the config validates for 8
  devices and the training loss traces at 512 x 512 (shapes only: no compile)."""
  from ebm_pretrain import objectives, validate
  from helpers import load_config
  c = load_config(config)
  assert c.data.image_size == 512 and c.data.name == "scene_parse150"
  validate.validate(c, num_devices=8)
  obj = objectives.get(c)
  images = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  params = jax.eval_shape(obj.init, jax.random.key(0), images)
  model_state = jax.eval_shape(obj.init_model_state, jax.random.key(0), images)
  batch = {"image": images, "mask": jax.ShapeDtypeStruct((2, 512, 512), jnp.uint8),
           "valid": jax.ShapeDtypeStruct((2,), jnp.bool_)}
  loss, (metrics, _) = jax.eval_shape(obj.loss, params, model_state, batch, jax.random.key(1))
  assert loss.shape == () and "pixel_accuracy" in metrics
  logits = jax.eval_shape(lambda p, s, x: obj.logits(p, s, x)[0], params, model_state, images)
  assert logits.shape == (2, 512, 512, 150)


def test_without_ade20k_the_program_says_how_to_prepare_it(tmp_path):
  import subprocess
  import sys
  from helpers import ROOT, cli_env
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_pretrain.main", "--config=configs/seg_upernet_vit_b.py",
       f"--workdir={tmp_path / 'wd'}", f"--config.data.data_dir={tmp_path / 'no_data'}"],
      cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "scene_parse150" in proc.stderr and "tfds build scene_parse150" in proc.stderr
