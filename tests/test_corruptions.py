import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import corruptions as C


def images(b=6, h=32, w=32, c=3, seed=0):
  # Normalised-space images with no exact zeros, so masked pixels are identifiable.
  x = jax.random.normal(jax.random.key(seed), (b, h, w, c))
  return jnp.where(jnp.abs(x) < 1e-3, 1e-3, x)


ALL_SPECS = ["mask_grid", "mask_grid8", "mask_random_small", "mask_random_large", "sr4",
             "denoise", "colorize", "mixed"]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_shape_dtype_batch_variation_and_rng(spec):
  fn = jax.jit(C.from_spec(spec, **({"sr": "sr4"} if spec == "mixed" else {})))
  x = images()
  for dtype in (jnp.float32, jnp.bfloat16):
    y = fn(jax.random.key(1), x.astype(dtype))
    assert y.shape == x.shape and y.dtype == dtype
  y1, y2 = fn(jax.random.key(1), x), fn(jax.random.key(2), x)
  assert not np.allclose(y1, x)  # it corrupts
  # Per-example randomness: with identical inputs, outputs differ across the batch
  # (SR and colorization are deterministic functions of the image by definition).
  same = jnp.broadcast_to(x[:1], x.shape)
  ys = fn(jax.random.key(3), same)
  if spec.startswith(("sr", "colorize")):
    np.testing.assert_allclose(ys[0], ys[1])
  else:
    assert not np.allclose(ys[0], ys[1])
    assert not np.allclose(y1, y2)


@pytest.mark.parametrize("cell,ratio,h,w", [(16, 0.75, 64, 64), (8, 0.1, 32, 40),
                                            (24, 0.5, 64, 64), (32, 0.9, 96, 64)])
def test_mask_grid_exact_ratio(cell, ratio, h, w):
  x = images(b=5, h=h, w=w)
  y = C.mask_grid(cell, ratio)(jax.random.key(0), x)
  gh, gw = math.ceil(h / cell), math.ceil(w / cell)
  expected = round(ratio * gh * gw)
  pad = np.zeros((5, gh * cell, gw * cell), bool)
  pad[:, :h, :w] = np.asarray(y[..., 0] == C.MASK_FILL)
  cells = pad.reshape(5, gh, cell, gw, cell)
  # A cell is masked as a whole (its in-image part), never partially.
  masked = cells[:, :, 0, :, 0]
  assert (masked.sum(axis=(1, 2)) == expected).all()
  unmasked = ~np.asarray(y[..., 0] == C.MASK_FILL)
  np.testing.assert_array_equal(np.asarray(y)[unmasked], np.asarray(x)[unmasked])


@pytest.mark.parametrize("size,lo,hi,n", [("small", 0.01, 0.025, 75), ("large", 0.02, 0.05, 25)])
def test_mask_random_box_statistics(size, lo, hi, n):
  h = w = 128
  fn = C.from_spec(f"mask_random_{size}")
  # One box at a time: its area fraction lies in [lo, hi] (up to pixel rounding).
  one = C.mask_random(num_boxes=1, min_size=lo, max_size=hi)
  y = one(jax.random.key(0), images(b=64, h=h, w=w, c=1))
  frac = np.asarray((y[..., 0] == 0).mean(axis=(1, 2)))
  assert (frac > lo * 0.8).all() and (frac < hi * 1.25).all(), (frac.min(), frac.max())
  # With all boxes, the covered fraction matches 1 - E[prod(1 - area_k)] roughly.
  y = fn(jax.random.key(1), images(b=32, h=h, w=w, c=1))
  cover = float((y == 0).mean())
  expected = 1 - (1 - (lo + hi) / 2) ** n
  assert abs(cover - expected) < 0.08, (cover, expected)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_sr_output_constant_on_blocks(scale):
  x = images(h=32, w=32)
  y = np.asarray(C.super_resolution(scale)(jax.random.key(0), x))
  blocks = y.reshape(6, 32 // scale, scale, 32 // scale, scale, 3)
  np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
  # The low-resolution image is the bicubic downsampling of the input.
  low = jax.image.resize(x, (6, 32 // scale, 32 // scale, 3), "bicubic")
  np.testing.assert_allclose(blocks[:, :, 0, :, 0], low, rtol=1e-5, atol=1e-5)


def test_colorize_gray_in_pixel_space_and_rejects_gray_input():
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  x = images()
  y = C.colorize(mean, std)(jax.random.key(0), x)
  rgb = np.asarray(y) * np.array(std) + np.array(mean)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-5)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 2], atol=1e-5)
  src = np.asarray(x) * np.array(std) + np.array(mean)
  np.testing.assert_allclose(rgb[..., 0], src @ np.array(C.LUMA_WEIGHTS), atol=1e-5)
  with pytest.raises(ValueError, match="colorize needs RGB images .*got 1 channel"):
    C.colorize()(jax.random.key(0), images(c=1))


def test_denoise_statistics():
  # Constant clean images: per example, the output mean is √γ·x and the residual
  # variance is 1 − γ, so (mean/x)² + var = 1 for every example; γ is U(0, 1).
  b = 512
  x = jnp.full((b, 32, 32, 1), 2.0)
  y = np.asarray(C.denoise()(jax.random.key(0), x)).reshape(b, -1)
  sqrt_gamma = y.mean(1) / 2.0
  np.testing.assert_allclose(sqrt_gamma ** 2 + y.var(1), 1.0, atol=0.12)
  gamma = np.clip(sqrt_gamma ** 2, 0, 1)
  assert abs(gamma.mean() - 0.5) < 0.05 and abs(gamma.var() - 1 / 12) < 0.02
  residual = (y - sqrt_gamma[:, None] * 2.0) / np.sqrt(np.maximum(1 - gamma, 1e-3))[:, None]
  keep = gamma < 0.9
  assert abs(residual[keep].mean()) < 0.02 and abs(residual[keep].std() - 1) < 0.05


def test_mixed_uses_each_task_and_skips_colorize_for_gray():
  x = images(b=256, h=32, w=32, c=3)
  mean, std = C.IMAGENET_MEAN, C.IMAGENET_STD
  y = C.mixed(sr="sr4", mean=mean, std=std)(jax.random.key(0), x)
  masked = np.asarray((y == 0).all(-1).any((1, 2)))
  rgb = np.asarray(y) * np.array(std) + np.array(mean)
  gray = np.abs(rgb[..., 0] - rgb[..., 1]).max((1, 2)) < 1e-4
  blocky = np.asarray(jnp.all(y[:, ::4, ::4] == y[:, 1::4, 1::4], axis=(1, 2, 3)))
  noisy = ~(masked | gray | blocky)
  for frac in (masked.mean(), gray.mean(), blocky.mean(), noisy.mean()):
    assert abs(frac - 0.25) < 0.1, (masked.mean(), gray.mean(), blocky.mean(), noisy.mean())
  y1 = C.mixed(sr="sr4")(jax.random.key(0), images(b=256, c=1))
  assert y1.shape == (256, 32, 32, 1)


def test_registry_errors_name_valid_tasks():
  with pytest.raises(ValueError, match=r"unknown task 'blur'; valid: colorize, denoise, mask_grid"):
    C.from_spec("blur")
  with pytest.raises(ValueError, match="ratio must be in"):
    C.from_spec("mask_grid", ratio=1.5)
  assert C.parse_spec("sr16") == ("sr", {"scale": 16})
  assert C.parse_spec("mask_grid32") == ("mask_grid", {"cell": 32})
