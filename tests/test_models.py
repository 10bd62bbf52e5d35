import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import energy, models
from helpers import assert_trees_close


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(model, size=224, channels=3):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels))))


def _vit_count(width, depth, mlp, patch=16, size=224, channels=3):
  """Independent count of the reference architecture (cls token, learned PE)."""
  block = 4 * (width * width + width) + 2 * width * mlp + mlp + width + 4 * width
  tokens = (size // patch) ** 2
  return depth * block + patch * patch * channels * width + width + width + tokens * width + 2 * width


@pytest.mark.parametrize("variant,width,depth,mlp,published", [
    ("S/16", 384, 12, 1536, 22.0e6), ("B/16", 768, 12, 3072, 86.6e6),
    ("L/16", 1024, 24, 4096, 304e6)])
def test_vit_parameter_counts(variant, width, depth, mlp, published):
  backbone = models.get_backbone("vit", variant)
  count = n_params(_shapes(backbone))
  assert count == _vit_count(width, depth, mlp)
  # The published figures (timm, DeiT) include the 1000-class classifier.
  with_head = count + 1000 * (width + 1)
  assert abs(with_head - published) / published < 0.01, with_head
  energy_count = n_params(_shapes(models.get_energy_model(
      "vit", variant, dtype=jnp.float32, param_dtype=jnp.float32)))
  assert energy_count == count + width  # bias-free Dense(1)


def test_sincos_posemb_is_not_a_parameter_and_matches_formula():
  learn = _shapes(models.get_backbone("vit", "mu/4"), size=16)["params"]
  fixed = _shapes(models.get_backbone("vit", "mu/4", posemb="sincos2d"), size=16)["params"]
  assert "pos_embedding" in learn and "pos_embedding" not in fixed
  pe = models.posemb_sincos_2d(2, 3, 8)
  assert pe.shape == (1, 6, 8)
  # token (y=1, x=2): first quarter sin(x*ω), third quarter sin(y*ω), ω_0 = 1
  np.testing.assert_allclose(pe[0, 5, 0], np.sin(2.0), rtol=1e-6)
  np.testing.assert_allclose(pe[0, 5, 4], np.sin(1.0), rtol=1e-6)
  np.testing.assert_allclose(pe[0, 5, 1], np.sin(2.0 / 10000), rtol=1e-5)


@pytest.mark.parametrize("pool", ["tok", "gap"])
@pytest.mark.parametrize("size,channels", [(16, 3), (24, 1), (8, 5)])
def test_vit_any_size_and_channels(pool, size, channels):
  m = models.get_backbone("vit", "mu/4", pool=pool)
  x = jax.random.normal(jax.random.key(0), (2, size, size, channels))
  variables = m.init(jax.random.key(1), x)
  assert m.apply(variables, x).shape == (2, 32)
  assert ("cls" in variables["params"]) == (pool == "tok")


def test_vit_gelu_is_exact_erf():
  m = models.get_backbone("vit", "mu/4")
  x = jnp.linspace(-3, 3, 7)
  assert not np.allclose(jax.nn.gelu(x, approximate=False), jax.nn.gelu(x, approximate=True))
  # Swapping the MLP's GELU for tanh-approx changes the output; the model uses erf.
  block = models.vit.MlpBlock(8)
  v = block.init(jax.random.key(0), jnp.ones((1, 4)))
  y = block.apply(v, x[:4][None] * jnp.ones((1, 4)))
  d0 = v["params"]["Dense_0"]; d1 = v["params"]["Dense_1"]
  h = x[:4][None] @ d0["kernel"] + d0["bias"]
  ref = jax.nn.gelu(h, approximate=False) @ d1["kernel"] + d1["bias"]
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
  del m


def test_compute_dtype_separate_from_param_dtype():
  m = models.get_energy_model("vit", "mu/4", dtype=jnp.bfloat16, param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  params = m.init(jax.random.key(1), x)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  e = m.apply({"params": params}, x)
  assert e.shape == (2,) and e.dtype == jnp.float32
  # bf16 compute: restoration and loss stay float32 and close to the f32 model.
  fn16 = models.energy_fn_of(m)
  m32 = models.get_energy_model("vit", "mu/4", dtype=jnp.float32, param_dtype=jnp.float32)
  fn32 = models.energy_fn_of(m32)
  chain16 = jax.jit(lambda p: energy.restore(fn16, p, x, 1.0, 2))(params)
  chain32 = jax.jit(lambda p: energy.restore(fn32, p, x, 1.0, 2))(params)
  assert chain16.dtype == jnp.float32
  loss16 = jax.jit(lambda p: energy.restoration_loss(fn16, p, 1.0, x, x * 0.5, 2))(params)
  assert loss16.dtype == jnp.float32
  assert float(jnp.abs(chain16 - chain32).max()) < 0.05 * float(jnp.abs(chain32 - x).max()) + 1e-2


def test_energy_head_is_bias_free_and_backbone_is_a_feature_extractor():
  m = models.get_energy_model("vit", "mu/4", dtype=jnp.float32, param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  params = m.init(jax.random.key(1), x)["params"]
  assert set(params["energy_head"]) == {"kernel"}
  feats = m.backbone.apply({"params": params["backbone"]}, x)
  np.testing.assert_allclose(m.apply({"params": params}, x),
                             feats @ params["energy_head"]["kernel"][:, 0], rtol=1e-5, atol=1e-6)


def test_bad_model_arguments():
  with pytest.raises(ValueError, match="unknown ViT variant 'X/16'"):
    models.get_backbone("vit", "X/16")
  with pytest.raises(ValueError, match="unknown model 'resnet'; valid: convnext, swin, vit"):
    models.get_backbone("resnet", "50")
  m = models.get_backbone("vit", "mu/5")
  with pytest.raises(ValueError, match="patch size 5 does not divide the image size 16x16"):
    m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("policy", ["full"])
def test_remat_leaves_the_energy_gradient_unchanged(policy):
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  plain = models.get_energy_model("vit", "mu/4", dtype=jnp.float32, param_dtype=jnp.float32)
  remat = models.get_energy_model("vit", "mu/4", dtype=jnp.float32, param_dtype=jnp.float32,
                                  remat=policy)
  params = plain.init(jax.random.key(1), x)["params"]
  grad = lambda m: jax.jit(jax.grad(lambda p: energy.restoration_loss(
      models.energy_fn_of(m), p, 0.5, x, x * 0.3, 2)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad(plain), grad(remat))


@pytest.mark.parametrize("patch,channels,hw", [(16, 3, (32, 48)), (4, 5, (13, 9)), (2, 8, (8, 8))])
def test_patch_conv_is_the_strided_convolution(patch, channels, hw):
  """PatchConv (the patch embeddings' matmul form) has nn.Conv's parameters,
  initial values, output, input gradient and second derivative: checkpoints and
  results do not depend on which one computed them."""
  import flax.linen as nn
  from ebm_pretrain.models.layers import PatchConv
  x = jax.random.normal(jax.random.key(0), (2,) + hw + (channels,))
  conv = nn.Conv(8, (patch, patch), strides=(patch, patch), padding="VALID")
  matmul = PatchConv(8, patch)
  variables = conv.init(jax.random.key(1), x)
  assert_trees_close(matmul.init(jax.random.key(1), x), variables, rtol=0, atol=0)
  w = jax.random.normal(jax.random.key(2), (8,))

  def second_order(module):  # d/dkernel of |x - grad_x E|^2, E = sum tanh(conv(x)) @ w
    def loss(v):
      gx = jax.grad(lambda x: jnp.sum(jnp.tanh(module.apply(v, x)) @ w))(x)
      return jnp.sum((x - 0.1 * gx) ** 2)
    return jax.jit(jax.value_and_grad(loss))(variables)
  np.testing.assert_allclose(matmul.apply(variables, x), conv.apply(variables, x), rtol=1e-5, atol=1e-5)
  (l_m, g_m), (l_c, g_c) = second_order(matmul), second_order(conv)
  np.testing.assert_allclose(l_m, l_c, rtol=1e-5)
  assert_trees_close(g_m, g_c, rtol=1e-4, atol=1e-5)
