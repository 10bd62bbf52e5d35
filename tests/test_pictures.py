"""Pictures a person can read: the grid (upscaled, a header naming the columns),
sorting drawn as patches, and ``python -m ebm_pretrain.restore`` on a user's
own folder of images, bad files included."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ebm_pretrain import objectives, pictures, restore, sorting
from helpers import load_config, train_inprocess


def test_grid_scales_each_image_up_and_names_the_columns():
  rng = np.random.default_rng(0)
  cols = {name: rng.uniform(0.1, 0.9, (2, 8, 8, 1)).astype(np.float32)
          for name in ("corrupted", "step_1", "original")}
  g = pictures.grid(cols, mean=(0.0,), std=(1.0,))   # normalised == pixels here
  factor, pad, top = 12, pictures.PAD, pictures.HEADER + pictures.PAD  # 8 px -> 96 px
  assert g.dtype == np.uint8 and g.shape == (top + 2 * (96 + pad), pad + 3 * (96 + pad), 1)
  for j, v in enumerate(cols.values()):
    x = pad + j * (96 + pad)
    for i in range(2):
      y = top + i * (96 + pad)
      block = g[y:y + 96, x:x + 96, 0].astype(np.float32)
      want = np.round(v[i, ..., 0] * 255).repeat(factor, 0).repeat(factor, 1)
      np.testing.assert_array_equal(block, want)  # nearest: each pixel a sharp 12x12 square
    header = g[:pictures.HEADER, x:x + 96, 0]
    assert header.min() < 100 and np.median(header) == 255  # dark text on white


def test_columns_come_in_restoration_order_whatever_the_dict_order():
  """A jitted visualize returns its dict sorted by key: original before step_1."""
  names = ["original", "step_10", "step_2", "corrupted", "step_1"]
  assert sorted(names, key=pictures.column_order) == [
      "corrupted", "step_1", "step_2", "step_10", "original"]
  assert sorted(["in_place", "step_1", "shuffled"], key=pictures.column_order) == [
      "shuffled", "step_1", "in_place"]
  cols = {"original": np.ones((1, 8, 8, 1)), "corrupted": np.zeros((1, 8, 8, 1))}
  g = pictures.grid(cols, mean=(0.0,), std=(1.0,))
  top = pictures.HEADER + pictures.PAD
  assert g[top + 10, 10, 0] == 0 and g[top + 10, 96 + 3 * pictures.PAD + 10, 0] == 255


def test_place_patches_puts_each_kept_patch_where_told():
  tiles = jnp.arange(4, dtype=jnp.float32) + 1.0                  # a 2x2 grid of 2px patches
  image = jnp.kron(tiles.reshape(2, 2), jnp.ones((2, 2)))[None, :, :, None]
  keep = jnp.array([[0, 3]])
  in_place = sorting.place_patches(image, 2, keep, keep)[0, ..., 0]
  block = jnp.ones((2, 2))
  np.testing.assert_array_equal(in_place, jnp.kron(jnp.array([[1., 0.], [0., 4.]]), block))
  moved = sorting.place_patches(image, 2, keep, jnp.array([[1, 2]]))[0, ..., 0]
  np.testing.assert_array_equal(moved, jnp.kron(jnp.array([[0., 1.], [4., 0.]]), block))


def test_sorting_draws_the_same_patches_shuffled_and_in_place():
  c = load_config("tiny", "task=sorting")
  obj = objectives.get(c)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params = obj.init(jax.random.PRNGKey(1), x[:1])
  cols = obj.visualize(params, {"image": x}, jax.random.PRNGKey(2))
  assert list(cols) == ["shuffled", "step_1", "step_2", "in_place"]
  assert all(v.shape == x.shape for v in cols.values())

  def tile_sums(img):  # the multiset of the 4x4 patches' contents
    t = np.asarray(img).reshape(2, 4, 4, 4, 4, 3).sum(axis=(2, 4, 5))
    return np.sort(t.reshape(2, -1), axis=1)
  np.testing.assert_allclose(tile_sums(cols["shuffled"]), tile_sums(cols["in_place"]), atol=1e-4)
  assert not np.allclose(cols["shuffled"], cols["in_place"])


def _png(path, size, channels=3):
  rng = np.random.default_rng(size)
  Image.fromarray(rng.integers(0, 255, (size, size, channels), dtype=np.uint8)).save(path)


def test_restore_draws_a_folder_and_names_each_bad_file(tiny_pretrain, tmp_path, capsys):
  folder = tmp_path / "images"
  folder.mkdir()
  _png(folder / "a.png", 16)
  _png(folder / "b.png", 16)
  _png(folder / "c_odd.png", 18)      # the patch (4) does not divide it
  _png(folder / "d_big.png", 20)      # divisible, but the learned position embeddings are 4x4
  (folder / "notes.txt").write_text("not an image")
  out = tmp_path / "grid.png"
  # At their own size (--resize=none) the odd ones are refused, in our words.
  status = restore.main([f"--init={tiny_pretrain}", f"--images={folder}", f"--output={out}",
                         "--resize=none"])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2
  assert len(err) == 3 and all(line.startswith("error: ") for line in err)
  for name in ("c_odd.png", "d_big.png", "notes.txt"):
    assert sum(name in line for line in err) == 1, (name, err)
  assert any(l.endswith("c_odd.png: 18x18 images do not fit the model (vit mu/4, trained on "
                        "16x16 images): leave out --resize=none to bring every image to 16x16")
             for l in err), err
  assert not any("http" in l or "Error" in l for l in err), err  # no library text
  w, h = Image.open(out).size   # 2 rows of 4 columns (corrupted, 2 steps, original), 16 -> 96 px
  pad = pictures.PAD
  assert (w, h) == (pad + 4 * (96 + pad), pictures.HEADER + pad + 2 * (96 + pad))

  status = restore.main([f"--init={tiny_pretrain}", f"--images={folder}", f"--output={out}",
                         "--task=sr2", "--steps=1", "--limit=2"])
  assert status == 0 and Image.open(out).size == (pad + 3 * (96 + pad), h)
  assert restore.main([f"--init={tmp_path / 'nothing'}", f"--images={folder}",
                       f"--output={out}"]) == 2
  assert capsys.readouterr().err.startswith("error: ")
  ft = str(tmp_path / "ft")  # a classifier restores nothing
  train_inprocess(f"tiny_finetune:init={tiny_pretrain},steps=1", ft, eval_examples=0)
  assert restore.main([f"--init={ft}", f"--images={folder}", f"--output={out}"]) == 2
  assert ("holds a 'supervised' model; restore needs one that offers 'restore' (a "
          "pixel-restoration energy checkpoint, objective=energy); it offers features, logits"
          in capsys.readouterr().err)


def test_restore_brings_a_users_images_of_any_size_to_the_model(tiny_pretrain, tmp_path, capsys):
  """A 64x64 gradient, a 48x48 checkerboard, a 56x56 blob, a 40x24 photo and a
  grey (1-channel) one, for a 16px RGB model: each resized (short side) and
  centre-cropped as evaluation does, and drawn."""
  folder = tmp_path / "images"
  folder.mkdir()
  y, x = np.mgrid[0:64, 0:64]
  Image.fromarray(np.stack([x * 4, y * 4, x * 2], -1).astype(np.uint8)).save(folder / "a_gradient.png")
  board = ((np.indices((48, 48)) // 6).sum(0) % 2 * 255).astype(np.uint8)
  Image.fromarray(board).convert("RGB").save(folder / "b_board.png")
  blob = (np.exp(-((np.mgrid[0:56, 0:56] - 28) ** 2).sum(0) / 200) * 255).astype(np.uint8)
  Image.fromarray(blob).save(folder / "c_blob_grey.png")  # one channel
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), np.uint8)).save(
      folder / "d_wide.png")
  out = tmp_path / "grid.png"
  status = restore.main([f"--init={tiny_pretrain}", f"--images={folder}", f"--output={out}"])
  captured = capsys.readouterr()
  assert status == 0, captured.err
  assert "4 images (a_gradient.png, b_board.png, c_blob_grey.png, d_wide.png)" in captured.out
  pad = pictures.PAD
  assert Image.open(out).size == (pad + 4 * (96 + pad), pictures.HEADER + pad + 4 * (96 + pad))
  # The "original" column is the evaluation pipeline's 16x16 view of each file.
  from ebm_pretrain.data import pipeline
  got, _ = restore.read_images(str(folder), 3, 16, size=16)
  np.testing.assert_array_equal(got[2][1], pipeline.center_crop(np.repeat(blob[..., None], 3, -1),
                                                                16, 16))
  assert [g[1].shape for g in got] == [(16, 16, 3)] * 4


def test_segmentation_overlays_tint_labelled_pixels_and_leave_unlabeled_ones():
  image = np.full((2, 8, 8, 1), 0.0, np.float32)  # normalised 0 = the mean, gray
  truth = np.zeros((2, 8, 8), np.int32)
  truth[:, :4] = 3
  truth[:, :, 6:] = 255  # unlabeled
  prediction = np.full((2, 8, 8), 3)
  img, pred, true = pictures.segmentation_columns(image, prediction, truth, [0.5], [0.25])
  gray = img[0, 0, 0]
  assert img.shape == (2, 8, 8, 3) and np.allclose(gray, 0.5)
  np.testing.assert_allclose(true[:, :, 6:], img[:, :, 6:])  # unlabeled: the image alone
  assert not np.allclose(true[0, 0, 0], gray) and not np.allclose(true[0, 5, 0], true[0, 0, 0])
  np.testing.assert_allclose(pred[0, 0, 0], true[0, 0, 0])  # the same class, the same colour
  drawn = pictures.grid({"image": image, "prediction": prediction, "truth": truth}, [0.5], [0.25])
  assert drawn.ndim == 3 and drawn.shape[-1] == 3
  assert drawn.shape[1] == pictures.PAD + 3 * (96 + pictures.PAD)  # 3 columns, 8 px -> 96
