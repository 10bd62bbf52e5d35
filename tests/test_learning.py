"""A tiny ViT energy model learns to restore: the loss falls and PSNR goes up."""
import jax
import jax.numpy as jnp
import optax

from ebm_pretrain import corruptions, energy, models


def structured_images(key, b, size=16):
  """Discs of random colour over vertical colour gradients: smooth, learnable."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  yy, xx = jnp.mgrid[:size, :size] / size
  cy, cx = jax.random.uniform(k1, (2, b, 1, 1))
  r = jax.random.uniform(k2, (b, 1, 1), minval=0.15, maxval=0.4)
  disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
  colour = jax.random.uniform(k3, (b, 1, 1, 3), minval=-1.5, maxval=1.5)
  ramp = jax.random.uniform(k4, (b, 1, 1, 3), minval=-1, maxval=1) * (yy[None, ..., None] - 0.5)
  return jnp.where(disc[..., None], colour, ramp)


def psnr(a, b, peak):
  return 10 * jnp.log10(peak ** 2 / jnp.mean((a - b) ** 2))


def test_tiny_vit_learns_to_denoise():
  clean = structured_images(jax.random.key(0), 32)
  model = models.get_energy_model("vit", "mu/4", dtype=jnp.float32, param_dtype=jnp.float32)
  energy_fn = models.energy_fn_of(model)
  corrupt = corruptions.from_spec("denoise")
  params = {"model": model.init(jax.random.key(1), clean)["params"],
            "log_alpha": energy.log_alpha_init(0.1)}
  opt = optax.adamw(3e-2, b1=0.9, b2=0.95, weight_decay=0.05)

  def loss_fn(p, x0):
    return energy.restoration_loss(energy_fn, p["model"], energy.alpha_from_log(p["log_alpha"]),
                                   x0, clean, 2)

  @jax.jit
  def train_step(p, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, corrupt(key, clean))  # fresh corruption
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  eval_x0 = corrupt(jax.random.key(999), clean)
  eval_loss = jax.jit(loss_fn)
  loss_before = float(eval_loss(params, eval_x0))
  opt_state = opt.init(params)
  # The loss plateaus, then falls: measured 0.255 -> 0.12-0.13 by step 120 (the
  # plateau ended between steps 50 and 90 in different runs and device counts).
  for i in range(120):
    params, opt_state, _ = train_step(params, opt_state, jax.random.fold_in(jax.random.key(2), i))
  loss_after = float(eval_loss(params, eval_x0))
  assert loss_after < 0.8 * loss_before, (loss_before, loss_after)

  chain = energy.restore(energy_fn, params["model"], eval_x0,
                         energy.alpha_from_log(params["log_alpha"]), 2)
  peak = float(clean.max() - clean.min())
  corrupted_psnr = float(psnr(eval_x0, clean, peak))
  restored_psnr = [float(psnr(c, clean, peak)) for c in chain]
  # Each restoration step brings the images closer to the clean ones.
  assert corrupted_psnr < restored_psnr[0] < restored_psnr[1], (corrupted_psnr, restored_psnr)
  assert restored_psnr[1] - corrupted_psnr > 0.25, (corrupted_psnr, restored_psnr)
