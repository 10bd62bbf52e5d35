"""Energy-inspired self-supervised pretraining for vision models, in JAX/Flax."""
from ebm_pretrain import xla_flags as _xla_flags

_xla_flags.apply()  # before any jax backend starts: see xla_flags.py
