"""The objective (paper Eq. 5): gradients against finite differences, an
independent reference, and a closed form."""
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_pretrain import energy, losses


def mlp_energy(params, x):
  """A smooth nonlinear energy over [B, D] inputs, so that second-order terms matter."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.sum(jax.nn.softplus(h @ params["w2"]), axis=-1)


def mlp_params(key, d=5, hidden=7, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w1": jax.random.normal(k1, (d, hidden), dtype) / np.sqrt(d),
          "b1": 0.1 * jax.random.normal(k2, (hidden,), dtype),
          "w2": jax.random.normal(k3, (hidden, 3), dtype) / np.sqrt(hidden)}


def _batch(key, b=4, d=5):
  kc, kn = jax.random.split(key)
  clean = jax.random.normal(kc, (b, d))
  return clean + 0.5 * jax.random.normal(kn, (b, d)), clean


def _loss(params, log_alpha, x0, clean, n, loss="smooth_l1", unroll=True):
  return energy.restoration_loss(mlp_energy, params, energy.alpha_from_log(log_alpha),
                                 x0, clean, n, loss=loss, unroll=unroll)


@pytest.mark.parametrize("loss", ["smooth_l1", "mse"])
def test_gradient_matches_finite_differences_float64(loss):
  with jax.enable_x64(True):
    params = mlp_params(jax.random.key(0), dtype=jnp.float64)
    x0, clean = _batch(jax.random.key(1))
    x0, clean = x0.astype(jnp.float64), clean.astype(jnp.float64)
    log_alpha = jnp.asarray(np.log(0.7), jnp.float64)
    # N=1: the loss is then a smooth function of params through ∇ₓE only.
    g_params, g_alpha = jax.grad(_loss, argnums=(0, 1))(params, log_alpha, x0, clean, 1, loss)

    eps = 1e-6
    flat, unravel = ravel_pytree(params)
    loss_fn = jax.jit(_loss, static_argnums=(4, 5))
    g_flat, _ = ravel_pytree(g_params)
    fd = np.array([
        (loss_fn(unravel(flat.at[i].add(eps)), log_alpha, x0, clean, 1, loss)
         - loss_fn(unravel(flat.at[i].add(-eps)), log_alpha, x0, clean, 1, loss)) / (2 * eps)
        for i in range(flat.size)])
    np.testing.assert_allclose(g_flat, fd, rtol=1e-5, atol=1e-8)
    fd_alpha = (loss_fn(params, log_alpha + eps, x0, clean, 1, loss)
                - loss_fn(params, log_alpha - eps, x0, clean, 1, loss)) / (2 * eps)
    assert g_flat.dtype == jnp.float64
    np.testing.assert_allclose(g_alpha, fd_alpha, rtol=1e-5, atol=1e-10)
    assert np.abs(g_flat).max() > 1e-4  # the check is not vacuous


def _reference_loss(params, alpha, x0, clean, n, *, stop_gradient=True):
  """Eq. 5 written out independently: a Python loop, SmoothL1 by hand."""
  x, total = x0, 0.0
  for _ in range(n):
    if stop_gradient:
      x = jax.lax.stop_gradient(x)
    gx = jax.grad(lambda z: mlp_energy(params, z).sum())(x)
    x = x - alpha * gx
    d = jnp.abs(x - clean)
    total = total + jnp.mean(jnp.where(d < 1, 0.5 * d ** 2, d - 0.5))
  return total / n


def test_two_steps_match_reference_with_stop_gradient_and_not_without():
  params = mlp_params(jax.random.key(2))
  x0, clean = _batch(jax.random.key(3))
  alpha = 0.8
  ours = jax.grad(lambda p: energy.restoration_loss(mlp_energy, p, alpha, x0, clean, 2))(params)
  ref = jax.grad(lambda p: _reference_loss(p, alpha, x0, clean, 2))(params)
  no_sg = jax.grad(lambda p: _reference_loss(p, alpha, x0, clean, 2, stop_gradient=False))(params)
  for k in params:
    np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-7)
  # Without the truncation the gradient is measurably different: the test can
  # tell the two apart.
  diff = max(float(jnp.abs(ours[k] - no_sg[k]).max()) for k in params)
  assert diff > 1e-3, diff


def test_quadratic_energy_one_step_closed_form():
  """E(x) = ½‖Wx‖² ⇒ x¹ = x⁰ − α WᵀW x⁰; MSE loss and its grads in closed form."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4)).astype(np.float32) / 2
  x0 = rng.normal(size=(2, 4)).astype(np.float32)
  clean = rng.normal(size=(2, 4)).astype(np.float32)
  alpha = 0.3
  quad = lambda p, x: 0.5 * jnp.sum((x @ p["w"].T) ** 2, axis=-1)

  chain = energy.restore(quad, {"w": w}, x0, alpha, 1)
  x1 = x0 - alpha * x0 @ w.T @ w
  np.testing.assert_allclose(chain[0], x1, rtol=1e-5, atol=1e-6)

  loss, (g_w, g_alpha) = jax.value_and_grad(
      lambda p, a: energy.restoration_loss(quad, p, a, x0, clean, 1, loss="mse"),
      argnums=(0, 1))({"w": w}, alpha)
  m = x0.size
  r = x1 - clean
  np.testing.assert_allclose(loss, np.sum(r ** 2) / m, rtol=1e-5)
  # dL/dα = (2/M) Σ r·(−WᵀW x⁰);  dL/dW = −(2α/M) Σ_b (W x⁰_b r_bᵀ + W r_b x⁰_bᵀ)
  np.testing.assert_allclose(g_alpha, 2 / m * np.sum(r * -(x0 @ w.T @ w)), rtol=1e-4)
  expected_w = -(2 * alpha / m) * (w @ x0.T @ r + w @ r.T @ x0)
  np.testing.assert_allclose(g_w["w"], expected_w, rtol=1e-4, atol=1e-6)


def test_alpha_gets_nonzero_gradient_and_is_positive():
  params = mlp_params(jax.random.key(4))
  x0, clean = _batch(jax.random.key(5))
  log_alpha = energy.log_alpha_init(0.5)
  assert float(energy.alpha_from_log(log_alpha)) == pytest.approx(0.5)
  assert float(energy.alpha_from_log(jnp.asarray(-50.0))) > 0
  g = jax.grad(_loss, argnums=1)(params, log_alpha, x0, clean, 2)
  assert abs(float(g)) > 1e-6
  with pytest.raises(ValueError, match="alpha must be positive"):
    energy.log_alpha_init(0.0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rolled_unrolled_and_remat_loops_agree(n):
  params = mlp_params(jax.random.key(6))
  x0, clean = _batch(jax.random.key(7))
  vg = lambda unroll: jax.value_and_grad(_loss, argnums=(0, 1))(
      params, jnp.asarray(0.0), x0, clean, n, "smooth_l1", unroll)
  (l_u, (g_u, a_u)), (l_r, (g_r, a_r)) = vg(True), vg(False)
  g_m, a_m = jax.grad(lambda p, a: energy.restoration_loss(
      mlp_energy, p, energy.alpha_from_log(a), x0, clean, n, remat=True), argnums=(0, 1))(
          params, jnp.asarray(0.0))
  np.testing.assert_allclose(a_m, a_u, rtol=1e-5, atol=1e-8)
  for k in params:  # remat recomputes; it must not change the gradient
    np.testing.assert_allclose(g_m[k], g_u[k], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(l_u, l_r, rtol=1e-6)
  np.testing.assert_allclose(a_u, a_r, rtol=1e-5, atol=1e-8)
  for k in params:
    np.testing.assert_allclose(g_u[k], g_r[k], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n,unroll,remat", [(1, True, False), (2, True, False), (3, True, False),
                                           (3, False, False), (2, True, True)])
def test_stepwise_gradient_equals_the_joint_one(n, unroll, remat):
  """Each step's gradient taken on its own (the stop-gradient between steps makes
  them independent) sums to the gradient of the whole loss, for every loop form."""
  params = {"w": mlp_params(jax.random.key(10)), "log_alpha": jnp.asarray(np.log(0.6))}
  x0, clean = _batch(jax.random.key(11), b=6)
  weights = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # an undecodable example
  split = lambda p: (p["w"], energy.alpha_from_log(p["log_alpha"]))
  joint = lambda p: energy.restoration_loss(mlp_energy, *split(p), x0, clean, n, unroll=unroll,
                                            remat=remat, weights=weights, with_aux=True)
  (l_j, aux_j), g_j = jax.value_and_grad(joint, has_aux=True)(params)
  (l_s, aux_s), g_s = jax.jit(lambda p: energy.restoration_value_and_grad(
      mlp_energy, split, p, x0, clean, n, unroll=unroll, remat=remat, weights=weights))(params)
  np.testing.assert_allclose(l_s, l_j, rtol=1e-6)
  np.testing.assert_allclose(aux_s["step_errors"], aux_j["step_errors"], rtol=1e-6)
  flat_j, flat_s = ravel_pytree(g_j)[0], ravel_pytree(g_s)[0]
  np.testing.assert_allclose(flat_s, flat_j, rtol=1e-5, atol=1e-8)
  assert np.abs(flat_j).max() > 1e-3 and abs(float(g_j["log_alpha"])) > 1e-5


def test_stepwise_gradient_keeps_fewer_buffers_alive():
  """XLA's own accounting of the compiled step (no timing): the per-step gradient
  holds one step's double-backward residuals at a time, the joint one all N."""
  params = {"w": mlp_params(jax.random.key(12), d=64, hidden=512), "log_alpha": jnp.zeros(())}
  x0, clean = _batch(jax.random.key(13), b=512, d=64)
  split = lambda p: (p["w"], energy.alpha_from_log(p["log_alpha"]))
  joint = jax.value_and_grad(lambda p: energy.restoration_loss(mlp_energy, *split(p), x0, clean, 3))
  stepwise = lambda p: energy.restoration_value_and_grad(mlp_energy, split, p, x0, clean, 3)
  temp = {name: jax.jit(f).lower(params).compile().memory_analysis().temp_size_in_bytes
          for name, f in (("joint", joint), ("stepwise", stepwise))}
  assert temp["stepwise"] < 0.8 * temp["joint"], temp


def test_chain_and_aux():
  params = mlp_params(jax.random.key(8))
  x0, clean = _batch(jax.random.key(9))
  loss, aux = energy.restoration_loss(mlp_energy, params, 0.5, x0, clean, 3, with_aux=True)
  assert aux["restored"].shape == (3,) + x0.shape
  assert aux["step_errors"].shape == (3,)
  np.testing.assert_allclose(loss, aux["step_errors"].mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["step_errors"][1],
                             losses.pixel_error(aux["restored"][1], clean), rtol=1e-6)
  # Each step moves against the energy gradient of the previous iterate.
  gx = jax.grad(lambda z: mlp_energy(params, z).sum())(aux["restored"][0])
  np.testing.assert_allclose(aux["restored"][1], aux["restored"][0] - 0.5 * gx, rtol=1e-5)


def test_bad_arguments_are_clear_errors():
  params = mlp_params(jax.random.key(0))
  x0, clean = _batch(jax.random.key(1))
  with pytest.raises(ValueError, match="num_steps"):
    energy.restoration_loss(mlp_energy, params, 0.5, x0, clean, 0)
  with pytest.raises(ValueError, match="unknown loss 'l3'"):
    energy.restoration_loss(mlp_energy, params, 0.5, x0, clean, 1, loss="l3")
  with pytest.raises(ValueError, match="shape"):
    energy.restoration_loss(mlp_energy, params, 0.5, x0[:2], clean, 1)


def test_example_weights_drop_examples():
  params = mlp_params(jax.random.key(10))
  x0, clean = _batch(jax.random.key(11))
  w = jnp.array([1.0, 0.0, 1.0, 0.0])
  weighted = energy.restoration_loss(mlp_energy, params, 0.5, x0, clean, 2, weights=w)
  kept = energy.restoration_loss(mlp_energy, params, 0.5, x0[::2], clean[::2], 2)
  np.testing.assert_allclose(weighted, kept, rtol=1e-6)


def test_contrastive_loss_gradient_matches_finite_differences_float64():
  """N = 0 (corrupted images as negatives): Eq. 3 plus the E² regulariser."""
  with jax.enable_x64(True):
    params = mlp_params(jax.random.key(0), dtype=jnp.float64)
    x_neg, x_pos = _batch(jax.random.key(1))
    x_neg, x_pos = x_neg.astype(jnp.float64), x_pos.astype(jnp.float64)
    w = jnp.asarray([1.0, 1.0, 0.0, 1.0], jnp.float64)  # one padded example
    loss = jax.jit(lambda p: energy.contrastive_loss(mlp_energy, p, x_pos, x_neg, 0.5, w)[0])
    g_flat, _ = ravel_pytree(jax.grad(loss)(params))
    flat, unravel = ravel_pytree(params)
    eps = 1e-6
    fd = np.array([(loss(unravel(flat.at[i].add(eps))) - loss(unravel(flat.at[i].add(-eps))))
                   / (2 * eps) for i in range(flat.size)])
    np.testing.assert_allclose(g_flat, fd, rtol=1e-6, atol=1e-9)
    assert np.abs(g_flat).max() > 1e-3
    # The value, written out: the padded example does not count.
    e_pos, e_neg = mlp_energy(params, x_pos), mlp_energy(params, x_neg)
    keep = np.asarray(w) > 0
    want = np.mean((e_pos - e_neg + 0.5 * (e_pos ** 2 + e_neg ** 2))[keep])
    np.testing.assert_allclose(loss(params), want, rtol=1e-12)
    # The negatives are data: no gradient flows into them.
    g_neg = jax.grad(lambda xn: energy.contrastive_loss(mlp_energy, params, x_pos, xn, 0.5)[0])(
        x_neg)
    np.testing.assert_array_equal(g_neg, 0.0)
