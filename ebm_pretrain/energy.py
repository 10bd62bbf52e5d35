"""The model-agnostic energy objective: paper Eq. 5, Algorithm 1 and Listing 1.

An energy function maps a batch to one scalar per example, ``energy_fn(params, x)
-> [B]``. A corrupted batch x̃⁰ is restored by N steps of gradient descent on the
energy,

    x̃ⁿ = SG(x̃ⁿ⁻¹) − α ∇ₓ E(params, SG(x̃ⁿ⁻¹)),

and the loss is the mean restoration error of every step against the clean batch.
Differentiating that loss w.r.t. ``params`` and ``alpha`` goes through ∇ₓE, so the
outer ``jax.value_and_grad`` is a grad-of-grad (second-order) computation. The
stop-gradient between steps truncates backpropagation through the chain: the loss
of step n only sees the parameters through step n's own input gradient.

Nothing here knows about images: ``x`` can equally be a batch of position
embeddings (patch sorting, paper Eq. 7).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from ebm_pretrain.losses import LOSSES, compute_dtype, pixel_error, weighted_mean

Array = jax.Array
Params = Any
EnergyFn = Callable[[Params, Array], Array]


# ----------------------------------------------------------------------------
# The step size α.
#
# α is positive by construction: the trainer keeps log α as the parameter.
# Under Adam a log parametrisation changes α by a roughly constant *relative*
# amount per step whatever its magnitude, whereas with softplus a large α would
# barely move. α and the scale of the linear head are interchangeable
# (α ∇ₓ(w·ψ) = (αw)·∇ₓψ), so the exact initial value matters less than it seems:
# ``config.alpha.init`` sets it (the paper's recipe 0.1; the small CPU demos start
# at 1.0, where a fresh model's input gradient is small: README, "Quick start").
# ----------------------------------------------------------------------------
def alpha_from_log(log_alpha: Array) -> Array:
  log_alpha = jnp.asarray(log_alpha)
  return jnp.exp(log_alpha.astype(compute_dtype(log_alpha.dtype)))


def log_alpha_init(alpha: float) -> Array:
  if not alpha > 0:
    raise ValueError(f"alpha must be positive, got alpha={alpha!r}")
  return jnp.log(jnp.asarray(alpha, jnp.float32))


# ----------------------------------------------------------------------------
# Restoration.
# ----------------------------------------------------------------------------
def input_gradient(energy_fn: EnergyFn, params: Params, x: Array) -> Array:
  """∇ₓ Σ_b E(params, x)_b, in x's (>= float32) dtype whatever the compute dtype."""
  total_energy = lambda x: jnp.sum(energy_fn(params, x).astype(x.dtype))
  return jax.grad(total_energy)(x)


def restore(energy_fn: EnergyFn, params: Params, x0: Array, alpha: Array,
            num_steps: int, *, unroll: bool = True, remat: bool = False) -> Array:
  """Returns the restoration chain [x̃¹, …, x̃ᴺ], shape [N, *x0.shape], float32
  (float64 for float64 inputs).

  The loop is a ``lax.fori_loop`` with static bounds (so reverse mode works).
  ``unroll=True`` unrolls it fully, so XLA can fuse and schedule across steps;
  ``unroll=False`` keeps one compiled step body, which compiles faster for large
  N and, under :func:`restoration_value_and_grad`, needs less memory
  (docs/performance.md). ``remat=True`` wraps each step's input gradient in
  ``jax.checkpoint``: the outer backward pass recomputes it instead of storing
  its residuals.
  """
  _check_num_steps(num_steps)
  dtype = compute_dtype(jnp.asarray(x0).dtype)
  x0 = jnp.asarray(x0, dtype)
  alpha = jnp.asarray(alpha, dtype)

  step = _descent_step(energy_fn, remat)

  def body(n, carry):
    x, chain = carry
    x = step(params, alpha, x)
    return x, chain.at[n].set(x)

  chain = jnp.zeros((num_steps,) + x0.shape, dtype)
  _, chain = lax.fori_loop(0, num_steps, body, (x0, chain), unroll=bool(unroll))
  return chain


def _check_problem(loss: str, x0: Array, x_clean: Array, num_steps: int) -> None:
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
  if x0.shape != x_clean.shape:
    raise ValueError(f"corrupted shape {x0.shape} != clean shape {x_clean.shape}")
  _check_num_steps(num_steps)


def _check_num_steps(num_steps) -> None:
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps must be a Python int >= 1, got {num_steps!r}")


def _descent_step(energy_fn: EnergyFn, remat: bool):
  """``(params, alpha, x) -> SG(x) - alpha ∇ₓE(params, SG(x))``: one step of Eq. 5."""
  grad_x = lambda p, x: input_gradient(energy_fn, p, x)
  if remat:
    grad_x = jax.checkpoint(grad_x)

  def step(params, alpha, x):
    x = lax.stop_gradient(x)  # Eq. 5: SG between consecutive steps.
    return x - alpha * grad_x(params, x)
  return step


def restoration_loss(energy_fn: EnergyFn, params: Params, alpha: Array,
                     x0: Array, x_clean: Array, num_steps: int, *,
                     loss: str = "smooth_l1", unroll: bool = True, remat: bool = False,
                     weights: Array | None = None, with_aux: bool = False):
  """Mean over the batch and the N steps of each step's error vs the clean x.

  ``weights`` [B] weight the examples (see :func:`pixel_error`).
  Returns the scalar loss, or with ``with_aux=True`` a pair
  ``(loss, {"step_errors": [N], "restored": [N, *x0.shape]})`` for
  ``jax.value_and_grad(..., has_aux=True)``.
  """
  _check_problem(loss, x0, x_clean, num_steps)
  chain = restore(energy_fn, params, x0, alpha, num_steps, unroll=unroll, remat=remat)
  step_errors = jnp.stack([pixel_error(chain[n], x_clean, loss, weights)
                           for n in range(num_steps)])
  total = jnp.mean(step_errors)
  if with_aux:
    return total, {"step_errors": step_errors, "restored": chain}
  return total


def restoration_value_and_grad(energy_fn: EnergyFn, split: Callable[[Params], tuple[Params, Array]],
                               params: Params, x0: Array, x_clean: Array, num_steps: int, *,
                               loss: str = "smooth_l1", unroll: bool = True, remat: bool = False,
                               weights: Array | None = None):
  """:func:`restoration_loss` and its gradient w.r.t. ``params``, one step at a time.

  ``split(params) -> (energy params, alpha)`` maps the differentiated pytree (e.g.
  ``{"model": ..., "log_alpha": ...}``) to the arguments of the energy and the
  step size. Returns ``((loss, {"step_errors": [N]}), grads)``, the output of
  ``jax.value_and_grad(..., has_aux=True)`` on the mean of the step errors.

  Because of the stop-gradient between steps, step n's error depends on the
  parameters only through step n, so the gradient of the mean is the mean of
  the per-step gradients. Taking each step's gradient before the next step
  starts (an ``optimization_barrier`` on the step's output and the accumulated
  gradient) keeps one step's residuals of the double backward alive instead of
  N: less memory and a faster step for the same FLOPs (measured:
  docs/performance.md).
  """
  _check_problem(loss, x0, x_clean, num_steps)
  dtype = compute_dtype(jnp.asarray(x0).dtype)
  step = _descent_step(energy_fn, remat)

  def step_error(params, x):
    energy_params, alpha = split(params)
    x = step(energy_params, jnp.asarray(alpha, dtype), x)
    return pixel_error(x, x_clean, loss, weights), x
  error_and_grad = jax.value_and_grad(step_error, has_aux=True)

  def body(n, carry):
    x, grads, errors = carry
    (err, x), g = error_and_grad(params, x)
    grads = jax.tree.map(lambda a, b: a + b / num_steps, grads, g)
    x, grads = lax.optimization_barrier((x, grads))  # step n's backward before step n+1
    return x, grads, errors.at[n].set(err)

  zeros = jax.tree.map(jnp.zeros_like, params)
  errors = jnp.zeros((num_steps,), dtype)
  _, grads, errors = lax.fori_loop(0, num_steps, body, (jnp.asarray(x0, dtype), zeros, errors),
                                   unroll=bool(unroll))
  return (jnp.mean(errors), {"step_errors": errors}), grads


# ----------------------------------------------------------------------------
# N = 0: corrupted images as negatives (appendix B.1, Figure A).
# ----------------------------------------------------------------------------
def contrastive_loss(energy_fn: EnergyFn, params: Params, x_pos: Array, x_neg: Array,
                     reg: float, weights: Array | None = None) -> tuple[Array, dict]:
  """Eq. 3 as a loss, with the negatives given instead of sampled: lower the
  energy of the clean images ``x_pos``, raise that of their corruptions
  ``x_neg``, plus Du & Mordatch (2019)'s regulariser ``reg`` (E⁺² + E⁻²) that
  keeps the energies from drifting without bound. Returns (loss, {"energy_pos",
  "energy_neg"}); ``weights`` [B] weight the examples (0 for padding)."""
  e_pos = energy_fn(params, x_pos).astype(compute_dtype(x_pos.dtype))
  e_neg = energy_fn(params, lax.stop_gradient(x_neg)).astype(e_pos.dtype)
  w = jnp.ones(e_pos.shape, e_pos.dtype) if weights is None else weights.astype(e_pos.dtype)
  loss = weighted_mean(e_pos - e_neg + reg * (e_pos ** 2 + e_neg ** 2), w)
  return loss, {"energy_pos": weighted_mean(e_pos, w), "energy_neg": weighted_mean(e_neg, w)}
