"""Energy-inspired self-supervised pretraining for vision models, in JAX/Flax."""
