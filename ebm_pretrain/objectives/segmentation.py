"""Semantic segmentation (paper Table 7): UperNet on the backbone's feature
pyramid (``models/upernet.py``), per-pixel softmax cross-entropy over the
labelled pixels (``data.segmentation.IGNORE`` is skipped), layer-wise lr decay
on a pretrained backbone as in fine-tuning. Batches carry ``mask`` [B, H, W]
uint8 beside the image."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ebm_pretrain.data.segmentation import IGNORE, SegAugment
from ebm_pretrain.errors import fail
from ebm_pretrain.models.upernet import SegmentationModel
from ebm_pretrain.objectives.base import (DTYPES, Base, get_backbone,
                                          check_layer_decay, layer_decay_multipliers)


def pixel_weights(mask: jax.Array, valid: jax.Array) -> jax.Array:
  """[B, H, W] float: 1 for a labelled pixel of a decodable example, else 0."""
  return ((mask != IGNORE) & valid[:, None, None]).astype(jnp.float32)


@dataclasses.dataclass
class SegmentationObjective(Base):

  def __post_init__(self):
    c = self.config
    aux = c.seg.aux_channels if c.seg.aux_weight else 0
    self.model = SegmentationModel(get_backbone(c), c.num_classes, c.seg.channels, aux,
                                   dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype])
    self.backbone = self.model.backbone

  @classmethod
  def defaults(cls, config) -> None:
    """Its block (values: BEiT's and MAE's ADE20K protocol)."""
    config.num_classes = 150
    # UperNet's width (BEiT / MAE: 768); the auxiliary FCN head's width and loss weight.
    config.seg = ml_collections.ConfigDict(dict(channels=768, aux_channels=256, aux_weight=0.4))
    config.layer_decay = 0.65     # on a loaded backbone only

  @classmethod
  def check(cls, config) -> None:
    if not 2 <= config.num_classes < IGNORE:
      fail("num_classes", f"must be in [2, {IGNORE}) (label {IGNORE} is 'unlabeled'), "
           f"got {config.num_classes}")
    check_layer_decay(config)
    if "seg" in config.augment:
      SegAugment.from_config(config.augment).check()

  def init(self, rng, images):
    return self.model.init(rng, images)["params"]

  def init_model_state(self, rng, images):
    variables = self.model.init(rng, images)
    return {k: v for k, v in variables.items() if k != "params"}  # BatchNorm statistics

  def lr_multipliers(self, params):
    return layer_decay_multipliers(self.config, params)

  def logits(self, params, model_state, images):
    """Evaluation-mode logits [B, H, W, K] (and the unchanged model state)."""
    variables = {"params": params, **model_state}
    return self.model.apply(variables, images), model_state

  def predict_fns(self) -> dict:
    return dict(super().predict_fns(),
                logits=lambda params, model_state, images: self.logits(params, model_state,
                                                                        images)[0])

  def loss(self, params, model_state, batch, rng):
    """Mean cross-entropy over the labelled pixels, plus ``seg.aux_weight`` times
    the auxiliary head's (BEiT / MAE: 0.4)."""
    c = self.config
    variables = {"params": params, **model_state}
    outputs, new_state = self.model.apply(variables, batch["image"], train=True,
                                          aux=bool(self.model.aux_channels),
                                          mutable=list(model_state), rngs={"dropout": rng})
    logits, aux_logits = outputs if self.model.aux_channels else (outputs, None)
    w = pixel_weights(batch["mask"], batch["valid"])
    labels = jnp.where(batch["mask"] == IGNORE, 0, batch["mask"]).astype(jnp.int32)
    total = jnp.maximum(jnp.sum(w), 1.0)

    def ce(logits):
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]
      return jnp.sum(w * nll) / total
    metrics = {"pixel_accuracy": jnp.sum(w * (jnp.argmax(logits, -1) == labels)) / total}
    loss = ce(logits)
    if aux_logits is not None:
      metrics["aux_loss"] = ce(aux_logits)
      loss = loss + c.seg.aux_weight * metrics["aux_loss"]
    return loss, (metrics, dict(new_state))

  def visualize(self, params, batch, rng, model_state=None):
    """The image, the predicted classes and the labels (``pictures.grid`` draws
    them as colour overlays), predicted as the evaluation does."""
    del rng
    if model_state is None:
      model_state = self.init_model_state(jax.random.key(0), batch["image"][:1])
    logits, _ = self.logits(params, model_state, batch["image"])
    truth = batch.get("mask", jnp.zeros(batch["image"].shape[:3], jnp.uint8))
    return {"image": batch["image"], "prediction": jnp.argmax(logits, -1), "truth": truth}

  def console_metrics(self) -> list[str]:
    return ["loss", "pixel_accuracy"]

  @classmethod
  def default_evals(cls) -> dict[str, dict]:
    return {"miou": dict(type="miou")}
