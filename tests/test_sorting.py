"""Patch sorting (task=sorting): edge masking, patch dropout, the PE energy, and
that training sorts shuffled position embeddings back."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_pretrain import errors, evaluators, models, objectives, sorting, validate
from ebm_pretrain.objectives.sorting import SortingObjective
from helpers import assert_trees_close, load_config
from test_learning import structured_images


def test_edge_masking_zeroes_exactly_k_outer_pixels_per_patch():
  p, g = 8, 6
  images = jnp.ones((16, g * p, g * p, 3))
  out = np.asarray(sorting.edge_mask(jax.random.key(0), images, p))
  ks = []
  for b in range(out.shape[0]):
    for i in range(g):
      for j in range(g):
        patch = out[b, i * p:(i + 1) * p, j * p:(j + 1) * p, 0]
        zero = patch == 0
        assert np.array_equal(zero, zero[..., None].repeat(3, -1)[..., 1])
        k = int(zero[p // 2].argmin())  # zeros from the left edge along the middle row
        assert k in (1, 2)
        ring = np.ones((p, p), bool)
        ring[k:p - k, k:p - k] = False
        np.testing.assert_array_equal(zero, ring)  # exactly the k outermost rings
        assert (out[b, i * p:(i + 1) * p, j * p:(j + 1) * p][~ring] == 1).all()
        ks.append(k)
  frac_one = np.mean(np.asarray(ks) == 1)
  assert 0.4 < frac_one < 0.6, frac_one  # 576 patches at p = 0.5


def test_patch_dropout_keeps_half_of_the_tokens_and_ignores_the_rest():
  keep = np.asarray(sorting.keep_indices(jax.random.key(0), 4, 16, 0.5))
  assert keep.shape == (4, 8)
  assert all(len(set(row)) == 8 for row in keep)
  assert not all(np.array_equal(keep[0], row) for row in keep[1:])  # per example
  # The ViT sees only the kept patches: the energy's gradient vanishes elsewhere.
  model = models.get_energy_model("vit", "mu/4", posemb="sincos2d", dtype=jnp.float32,
                                  param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
  params = jax.jit(model.init)(jax.random.key(2), x)["params"]
  pe = models.posemb_sincos_2d(4, 4, 32)[0][jnp.asarray(keep)]
  grad = jax.jit(jax.grad(lambda x: model.apply({"params": params}, x, posemb=pe,
                                                keep=jnp.asarray(keep)).sum()))(x)
  per_patch = np.abs(np.asarray(grad)).reshape(4, 4, 4, 4, 4).sum(axis=(2, 4)).reshape(4, 16)
  for b in range(4):
    kept = np.zeros(16, bool)
    kept[keep[b]] = True
    assert (per_patch[b][~kept] == 0).all() and (per_patch[b][kept] > 0).all()


def test_shuffled_embeddings_are_a_permutation_of_the_true_ones():
  pe = models.posemb_sincos_2d(4, 4, 32)[0]
  keep = sorting.keep_indices(jax.random.key(0), 3, 16, 1.0)
  shuffled, true = sorting.shuffled_posemb(jax.random.key(1), pe, keep)
  np.testing.assert_array_equal(true, pe[keep])
  for b in range(3):  # every row of the table once, in another order
    rows = {tuple(np.round(np.asarray(r), 5)) for r in shuffled[b]}
    assert rows == {tuple(np.round(np.asarray(r), 5)) for r in pe}
    assert not np.allclose(shuffled[b], true[b])
  np.testing.assert_allclose(sorting.sorted_fraction(true, pe, keep), 1.0)


def test_sorting_config_checks():
  c = load_config("tiny", "task=sorting")
  assert (c.model.posemb, c.loss) == ("sincos2d", "mse")
  validate.validate(c, num_devices=1)
  c.model.posemb = "learn"
  try:
    validate.validate(c, num_devices=1)
    raise AssertionError("expected a ConfigError")
  except errors.ConfigError as e:
    assert "sincos2d" in str(e)


def test_training_on_a_fixed_batch_sorts_the_embeddings():
  c = load_config("tiny", "task=sorting")
  c.task_kwargs.edge_mask = False  # 4px patches: k = 2 would blank them
  c.alpha.init = 1.0
  obj = objectives.get(c)
  assert isinstance(obj, SortingObjective)
  images = structured_images(jax.random.key(0), 16)
  batch = {"image": images, "valid": jnp.ones(16, bool)}
  params = jax.jit(obj.init)(jax.random.key(1), images)
  opt = optax.adamw(3e-3, b1=0.9, b2=0.95)
  rng = jax.random.key(7)  # the same shuffle and dropout every step: a fixed problem

  # The trainer's gradient (config.stepwise_grads: one inner step at a time) is
  # the loss's autodiff gradient, with the same loss and metrics.
  assert c.stepwise_grads
  (l_s, (m_s, _)), g_s = jax.jit(obj.value_and_grad)(params, {}, batch, rng)
  (l_j, (m_j, _)), g_j = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, {}, batch, rng)
  np.testing.assert_allclose(l_s, l_j, rtol=1e-6)
  assert sorted(m_s) == sorted(m_j) and "step_error_2" in m_s
  for k in m_s:
    np.testing.assert_allclose(m_s[k], m_j[k], rtol=1e-6, err_msg=k)
  assert_trees_close(g_s, g_j, rtol=1e-4, atol=1e-7)

  @jax.jit
  def step(p, s):
    (loss, _), g = obj.value_and_grad(p, {}, batch, rng)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  for _ in range(60):
    params, state, _ = step(params, state)
  ev = evaluators.build(c, obj, evaluators.Context.local())[0]  # the sorting evaluator
  totals = jax.device_get(jax.jit(ev.batch_sums)(params, {}, batch, rng))
  summary = {f"eval/{k}": v for k, v in ev.summary(totals, 16.0).items()}
  # The steps move the shuffled embeddings towards the true ones.
  assert summary["eval/pe_mse_step_2"] < 0.8 * summary["eval/pe_mse_shuffled"], summary
  assert summary["eval/pe_mse_step_1"] < summary["eval/pe_mse_shuffled"], summary
