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
  model = upernet.SegmentationModel(_backbone(family), num_classes=5, channels=16)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  variables = model.init(jax.random.key(1), x)
  assert model.apply(variables, x).shape == (2, size, size, 5)
  labels = jax.random.randint(jax.random.key(2), (2, size, size), 0, 5)

  def loss(params):
    logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(3)})
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)
    return ce.mean(), state
  (value, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  assert np.isfinite(value)
  # Every parameter, backbone to classifier, gets a gradient; BatchNorm statistics move.
  norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads)
  assert all(v > 0 for v in jax.tree.leaves(norms["decode_head"])), norms["decode_head"]
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
