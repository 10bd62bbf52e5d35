"""GPU and TPU readiness without the hardware: the jitted pretraining and
fine-tuning steps, bf16, sharded over an 8-device mesh, export with jax.export
for the cuda and tpu platforms from this CPU machine. jax.export refuses custom
calls that are not stable on the target (CPU-only kernels), and a host callback
would show in the module."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ebm_pretrain import objectives, optim, train, transfer, validate
from helpers import load_config


def _export(config):
  devices = jax.devices()[:8]
  assert len(devices) == 8, "conftest asks for 8 fake CPU devices"
  mesh = Mesh(devices, ("data",))
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  d = config.data
  objective = objectives.get(config)
  dummy = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  schedule = optim.learning_rate_schedule(config, 100, 10.0)
  params = jax.eval_shape(objective.init, jax.random.PRNGKey(0), dummy)
  tx = optim.make_optimizer(config, params, objective, schedule)
  state = jax.eval_shape(lambda p: {
      "params": p, "model_state": objective.init_model_state(jax.random.PRNGKey(0), dummy),
      "opt": tx.init(p), "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(1)}, params)
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                       state)
  b = config.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.uint8,
                                         sharding=batched),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batched),
           "valid": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=batched)}
  step = jax.jit(train.make_train_step(objective, tx, schedule, d.mean, d.std),
                 in_shardings=(jax.tree.map(lambda s: s.sharding, state), batched),
                 out_shardings=(jax.tree.map(lambda s: s.sharding, state), replicated),
                 donate_argnums=(0,))
  return jax.export.export(step, platforms=("cuda", "tpu"))(state, batch)


def _check(exported):
  assert exported.platforms == ("cuda", "tpu")
  assert exported.nr_devices == 8
  text = exported.mlir_module()
  assert "callback" not in text.lower()  # no host round trips inside the step
  # The energy step differentiates twice; bf16 compute reaches the matmuls.
  assert "bf16" in text


@pytest.mark.parametrize("family", ["vit", "convnext", "swin"])
def test_pretraining_step_exports_for_gpu_and_tpu(family):
  c = load_config("tiny", f"model={family}")
  c.dtype = "bfloat16"
  validate.validate(c, num_devices=8)
  _check(_export(c))


def test_finetuning_step_exports_for_gpu_and_tpu():
  c = load_config("tiny_finetune")
  c.dtype = "bfloat16"
  c = transfer.resolve_model(c)
  validate.validate(c, num_devices=8)
  _check(_export(c))
