"""ConvNeXt and Swin: sizes, shapes, the shifted-window mask, layer decay groups,
energy learning, and the registry's pretrain -> fine-tune path through the CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import errors, models, objectives, recipes, transfer, validate
from ebm_pretrain.models import swin
from helpers import load_config, run_main, train_inprocess
from test_learning import structured_images


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _init_shapes(backbone, size, channels=3, batch=1):
  images = jnp.zeros((batch, size, size, channels))
  return jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), images))


# Published sizes with the 1000-class classifier (ConvNeXt and Swin papers, timm).
@pytest.mark.parametrize("name,variant,width,published", [
    ("convnext", "T", 768, 28.6e6), ("convnext", "S", 768, 50.2e6),
    ("convnext", "B", 1024, 88.6e6), ("swin", "T", 768, 28.3e6), ("swin", "S", 768, 49.6e6),
    ("swin", "B", 1024, 87.8e6)])
def test_parameter_counts(name, variant, width, published):
  features, variables = _init_shapes(models.get_backbone(name, variant), 224)
  assert features.shape == (1, width)
  with_head = n_params(variables) + 1000 * (width + 1)
  assert abs(with_head - published) / published < 0.01, with_head
  energy = jax.eval_shape(lambda: models.get_energy_model(
      name, variant, dtype=jnp.float32, param_dtype=jnp.float32).init(
          jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert n_params(energy) == n_params(variables) + width  # bias-free Dense(1)


@pytest.mark.parametrize("name,variant,sizes,width", [
    ("convnext", "T", (224, 160), 768), ("swin", "T", (224, 448), 768)])
def test_standard_variants_take_two_sizes(name, variant, sizes, width):
  for size in sizes:
    features, _ = _init_shapes(models.get_backbone(name, variant), size, batch=2)
    assert features.shape == (2, width)


@pytest.mark.parametrize("name,width", [("convnext", 64), ("swin", 32)])
def test_tiny_variants_run_at_two_sizes_and_channel_counts(name, width):
  # (ConvNeXt's layer scale starts at 1e-6, which would hide the drop path.)
  extra = {"layer_scale_init": 1.0} if name == "convnext" else {}
  backbone = models.get_backbone(name, "mu", drop_path=0.1, **extra)
  for size, channels in ((16, 1), (32, 3)):
    x = jax.random.normal(jax.random.key(size), (2, size, size, channels))
    variables = jax.jit(backbone.init)(jax.random.key(0), x)
    out = jax.jit(backbone.apply)(variables, x)
    assert out.shape == (2, width) and bool(jnp.all(jnp.isfinite(out)))
    # Drop path is active in training only.
    train = jax.jit(lambda v, x: backbone.apply(v, x, train=True, rngs={
        "dropout": jax.random.key(1)}))(variables, x)
    assert not np.allclose(train, out)


@pytest.mark.parametrize("name,variant,size,msg", [
    ("convnext", "T", 200, "must be divisible by 32"),
    ("convnext", "mu", 20, "must be divisible by 8"),
    ("swin", "T", 200, "must be divisible by 32"),
    ("swin", "mu", 18, "must be divisible by 4")])
def test_sizes_the_network_cannot_take_are_clear_errors(name, variant, size, msg):
  with pytest.raises(ValueError, match=msg):
    _init_shapes(models.get_backbone(name, variant), size)
  # ... and the config check says so before anything is compiled.
  c = load_config("tiny", f"model={name}")
  c.model.variant = variant
  c.data.image_size = size
  with pytest.raises(errors.ConfigError, match=f"config.model: {name} .*{msg}"):
    validate.validate(c, num_devices=1)


def test_unknown_variants_and_options_are_clear_errors():
  with pytest.raises(ValueError, match="unknown ConvNeXt variant 'X'"):
    models.get_backbone("convnext", "X")
  c = load_config("tiny", "model=swin")
  c.model.pool = "tok"  # a ViT option
  with pytest.raises(errors.ConfigError, match="config.model: swin .*pool"):
    validate.validate(c, num_devices=1)


def _influence(block, h, w, dim=8):
  """[h*w, h*w] bool: whether output token q depends on input token k."""
  x = jax.random.normal(jax.random.key(0), (1, h, w, dim))
  variables = jax.jit(block.init)(jax.random.key(1), x)
  jac = jax.jit(jax.jacrev(lambda x: block.apply(variables, x)))(x)  # [1,h,w,dim, 1,h,w,dim]
  return np.asarray(jnp.abs(jac).sum(axis=(0, 3, 4, 7))).reshape(h * w, h * w) > 0


@pytest.mark.parametrize("shift", [0, 2])
def test_tokens_attend_only_within_their_window(shift):
  h = w = 8
  window = 4
  block = swin.SwinBlock(num_heads=2, window=window, shift=shift)
  got = _influence(block, h, w)
  # Independently: with a cyclic shift by s, token (r, c) falls in window
  # floor((r - s) / window) of the unwrapped map; tokens that wrap around to the
  # far side form windows of their own (index -1), so they cannot mix with the
  # tokens they are rolled next to.
  r, c = np.divmod(np.arange(h * w), w)
  win_r, win_c = np.floor_divide(r - shift, window), np.floor_divide(c - shift, window)
  expected = (win_r[:, None] == win_r[None]) & (win_c[:, None] == win_c[None])
  np.testing.assert_array_equal(got, expected)
  if shift:
    # The mask did something: a plain cyclic shift would let wrapped tokens mix.
    cyclic_r = ((r - shift) % h) // window
    cyclic_c = ((c - shift) % w) // window
    plain = (cyclic_r[:, None] == cyclic_r[None]) & (cyclic_c[:, None] == cyclic_c[None])
    assert plain.sum() > expected.sum()


def test_shifted_window_mask_matches_regions():
  mask = swin.shifted_window_mask(8, 8, 4, 2)
  assert mask.shape == (4, 16, 16)
  assert mask[0].all()  # the top-left window holds one region
  # The bottom-right window holds 4 regions of 2x2 tokens: 4 * 4 * 4 allowed pairs.
  assert mask[3].sum() == 64 and np.all(np.diag(mask[3]))


def test_layer_decay_groups_follow_the_official_fine_tuning_code():
  # ConvNeXt (get_num_layer_for_convnext, 12 groups + head = 14 ids).
  lid = lambda p: models.layer_id("convnext", "B", p)
  assert lid("downsample_layers_0/conv/kernel") == (0, 13)
  assert lid("stages_0/blocks_2/gamma") == (1, 13)
  assert lid("downsample_layers_1/norm/scale") == (2, 13)
  assert lid("stages_2/blocks_0/dwconv/kernel") == (3, 13)
  assert lid("stages_2/blocks_26/pwconv2/bias") == (11, 13)
  assert lid("downsample_layers_3/conv/kernel") == (12, 13)
  assert lid("stages_3/blocks_1/norm/bias") == (12, 13)
  assert lid("norm/scale") == (13, 13)
  # Swin-T (SimMIM get_swin_layer): depths (2, 2, 6, 2).
  lid = lambda p: models.layer_id("swin", "T", p)
  assert lid("patch_embed/kernel") == (0, 13)
  assert lid("patch_embed_norm/scale") == (0, 13)
  assert lid("layers_0/blocks_0/attn/qkv/kernel") == (1, 13)
  assert lid("layers_2/blocks_5/mlp/fc2/bias") == (10, 13)
  assert lid("layers_2/downsample/reduction/kernel") == (10, 13)
  assert lid("layers_3/blocks_1/norm2/scale") == (12, 13)
  assert lid("norm/bias") == (13, 13)


@pytest.mark.parametrize("name", ["convnext", "swin"])
def test_energy_loss_falls_on_a_fixed_batch(name):
  import optax
  from ebm_pretrain import corruptions, energy
  from ebm_pretrain.losses import pixel_error
  clean = structured_images(jax.random.key(0), 16)
  model = models.get_energy_model(name, "mu", dtype=jnp.float32, param_dtype=jnp.float32)
  energy_fn = models.energy_fn_of(model)
  x0 = corruptions.from_spec("denoise")(jax.random.key(3), clean)
  params = {"model": model.init(jax.random.key(1), clean)["params"],
            "log_alpha": energy.log_alpha_init(1.0)}
  # Clipped as the family's configs are (recipes.ENERGY_GRAD_CLIP).
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b1=0.9, b2=0.95))

  def loss_fn(p):
    return energy.restoration_loss(energy_fn, p["model"], energy.alpha_from_log(p["log_alpha"]),
                                   x0, clean, 2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  losses = []
  for _ in range(40):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  corrupted = float(pixel_error(x0, clean, "smooth_l1", jnp.ones(16, bool)))
  # Not just back to the identity: the restored images beat the noisy input.
  assert losses[-1] < 0.9 * min(losses[0], corrupted), (corrupted, losses)


@pytest.fixture(scope="module")
def family_pretrain(tmp_path_factory):
  """A ConvNeXt pretraining. (Swin takes the same registry and trainer path; its
  model is covered above: one family end-to-end keeps the suite within its time
  budget.)"""
  wd = str(tmp_path_factory.mktemp("convnext_pre") / "run")
  train_inprocess("tiny:model=convnext,steps=2", wd, eval_examples=0, image_every=100)
  return "convnext", wd


def test_pretrain_then_finetune(family_pretrain, tmp_path, capsys):
  name, pre = family_pretrain
  wd = str(tmp_path / "ft")
  train_inprocess(f"tiny_finetune:init={pre},steps=2", wd, eval_examples=0)
  assert "Initialised the backbone" in capsys.readouterr().out
  with open(os.path.join(wd, "config.json")) as f:
    model = json.load(f)["model"]
  # The checkpoint's backbone, with the family's fine-tuning drop path.
  assert (model["name"], model["variant"]) == (name, "mu")
  assert model["drop_path"] == models.finetune_model({"name": name})["drop_path"] > 0
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in records if "loss" in r][-1] == 2


def test_a_convnext_checkpoint_into_a_vit_config_is_a_clear_error(family_pretrain, tmp_path):
  _, pre = family_pretrain
  proc = run_main("configs/tiny_finetune.py", str(tmp_path / "ft"), f"--config.init={pre}",
                  check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "holds a convnext mu backbone; this config builds vit mu/4" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_from_init_without_init_is_a_clear_error():
  c = load_config("finetune")
  with pytest.raises(errors.ConfigError, match="config.init is empty too"):
    transfer.resolve_model(c)
  c = load_config("finetune", "model=swin:T")
  assert (c.model.name, c.model.variant, c.model.drop_path) == ("swin", "T", 0.2)
  assert load_config("convnext_t", "task=sr16").model.to_dict() == dict(
      name="convnext", variant="T", drop_path=0.0)


@pytest.fixture
def scratch_registry(monkeypatch):
  """The backbone registry as it was before the test (the docs/backbones.md example
  registers a backbone; other tests list the registry)."""
  monkeypatch.setattr(models, "_BACKBONES", models._BACKBONES.copy())


def test_the_docs_custom_backbone_example_trains_and_decays(scratch_registry):
  from helpers import ROOT
  readme = open(os.path.join(ROOT, "docs", "backbones.md")).read()
  block = readme.split("<!-- custom-backbone-example -->\n```python\n", 1)[1].split("```", 1)[0]
  assert len(block.strip().splitlines()) <= 30
  exec(compile(block, "docs/backbones.md", "exec"), {})
  assert "tiny_cnn" in models.backbone_names()
  c = load_config("tiny")
  c.model = recipes.model_config("tiny_cnn", "S")
  validate.validate(c, num_devices=1)
  obj = objectives.get(c)
  images = structured_images(jax.random.key(0), 8)
  params = jax.jit(obj.init)(jax.random.key(1), images)
  batch = {"image": images, "valid": jnp.ones(8, bool)}
  (loss, _), grads = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(
      params, {}, batch, jax.random.key(2))
  assert np.isfinite(float(loss))
  assert float(jnp.abs(grads["model"]["backbone"]["conv_0"]["kernel"]).sum()) > 0
  ft = load_config("tiny_finetune")
  ft.model = recipes.model_config("tiny_cnn", "S")
  ft.init = "a/pretraining"  # layer decay applies to a loaded backbone only
  ft_obj = objectives.get(ft)
  factors = ft_obj.lr_multipliers(jax.eval_shape(ft_obj.init, jax.random.key(0), images))
  assert factors["backbone"]["conv_0"]["kernel"] == pytest.approx(0.75 ** 3)
  assert factors["backbone"]["norm"]["scale"] == 1.0
