"""An objective from outside the package, in one file (docs/extending.md):
predict which of four rotations an image was given (Gidaris et al. 2018), a
linear head on the backbone. ``--config.objective=rotation``."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_pretrain import objectives
from ebm_pretrain.errors import fail
from ebm_pretrain.losses import weighted_mean


@dataclasses.dataclass
class RotationObjective(objectives.Base):

  def __post_init__(self):
    self.backbone = objectives.base.get_backbone(self.config)
    self.head = nn.Dense(4, name="head")

  @classmethod
  def check(cls, config):
    if config.data.image_size % 2:
      fail("data.image_size", "rotation needs square images of even size")

  def init(self, rng, images):
    k1, k2 = jax.random.split(rng)
    backbone = self.backbone.init(k1, images)["params"]
    features = self.backbone.apply({"params": backbone}, images)
    return {"backbone": backbone, "head": self.head.init(k2, features)["params"]}

  def _rotated(self, images, rng):
    k = jax.random.randint(rng, (images.shape[0],), 0, 4)
    rotations = jnp.stack([jnp.rot90(images, r, axes=(1, 2)) for r in range(4)])
    return rotations[k, jnp.arange(images.shape[0])], k

  def loss(self, params, model_state, batch, rng):
    k_rot, k_drop = jax.random.split(rng)
    images, k = self._rotated(batch["image"], k_rot)
    features = self.backbone.apply({"params": params["backbone"]}, images, train=True,
                                   rngs={"dropout": k_drop})
    logits = self.head.apply({"params": params["head"]}, features).astype(jnp.float32)
    w = batch["valid"].astype(jnp.float32)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), k[:, None], axis=1)[:, 0]
    acc = weighted_mean(jnp.argmax(logits, -1) == k, w)
    return weighted_mean(ce, w), ({"rotation_accuracy": acc}, model_state)

  def predict_fns(self):
    """A classifier of rotations: its head's logits [B, 4] beside the features."""
    def logits(params, model_state, images):
      return self.head.apply({"params": params["head"]}, self.features(params, model_state,
                                                                       images))
    return dict(super().predict_fns(), logits=logits)

  def console_metrics(self):
    return ["loss", "rotation_accuracy"]


objectives.register("rotation", RotationObjective)
