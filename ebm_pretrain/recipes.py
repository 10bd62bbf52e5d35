"""Recipes: what ``configs/*.py`` import. The paper's pretraining, fine-tuning,
linear-probing, scratch and segmentation recipes, the per-family tables of the
demo and test models, and ``set_task``, which applies an objective's short name.
The keys and their defaults are ``schema``'s (and each objective's block); the
``get_config(arg)`` parsing is ``config_args``' (re-exported here, as configs
call it); checks live in ``validate``."""
from __future__ import annotations

import ml_collections

from ebm_pretrain import checkpoints, models, schema, tasks, transfer
from ebm_pretrain.config_args import override, parse_arg  # noqa: F401  (configs call recipes.*)
from ebm_pretrain.data import segmentation
from ebm_pretrain.errors import ConfigError


def pretrain_defaults() -> ml_collections.ConfigDict:
  """The paper's pretraining recipe (Table A) for a ViT on ImageNet-1k: the
  schema's values and the energy objective's block (N = 2, learnable α from 0.1,
  SmoothL1), task mixed."""
  c = schema.base()
  set_objective(c, "energy", "mixed")
  return c


def finetune_defaults() -> ml_collections.ConfigDict:
  """The paper's fine-tuning recipe (Table A, after MAE) for a ViT on ImageNet-1k:
  AdamW lr 1e-3 x batch/256, betas (0.9, 0.999), wd 0.05, layer decay 0.75,
  batch 1024, 5 warmup epochs then cosine, drop path 0.1, RandAug (9, 0.5),
  label smoothing 0.1, mixup 0.8, cutmix 1.0, global-pool head; top-1 on a
  224 center crop of the image resized to 256."""
  c = schema.base()
  set_objective(c, "supervised")  # its block: the head, layer decay 0.75, label smoothing, mixup
  c.model.pool = "gap"
  c.model.drop_path = 0.1
  # RandAug (9, 0.5): timm's rand-m9-mstd0.5 (2 ops); randaug_ops=0 turns it off.
  c.augment.update(dict(crop_scale=(0.08, 1.0), flip=True, randaug_ops=2, randaug_magnitude=9.0,
                        randaug_std=0.5))
  c.data.eval_resize = 256
  c.batch_size = 1024
  c.total_epochs = 100
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=1e-3, lr_base_batch=256, b1=0.9, b2=0.999, weight_decay=0.05,
      warmup_epochs=5, warmup_steps=0, min_lr=1e-6, grad_clip=0.0))
  c.image_every = 10 ** 9       # no restoration grids
  c.checkpoint_every = 1000
  c.keep_checkpoints = 1        # the last; best/ holds the best
  c.eval_examples = -1          # the whole validation split
  c.eval_every = 5000
  c.best_metric = "eval/top1"
  return c


def segmentation_defaults() -> ml_collections.ConfigDict:
  """UperNet on ADE20K, the protocol of BEiT and MAE that the paper follows
  (Table 7): 160k iterations at batch 16, 512 x 512 crops (mmsegmentation's
  rescale 0.5-2.0 of 2048 x 512, crop with cat_max_ratio 0.75, flip, photometric
  distortion), AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05, layer decay 0.65,
  1500 warmup iterations, drop path 0.1, UperNet channels 768, an auxiliary
  FCN head (256 wide, loss weight 0.4) on the stride-16 level. Differences:
  cosine instead of linear ("poly", power 1) decay, and whole-image inference on the image fitted into the 512 square instead of
  sliding windows at 2048 x 512 (evaluators/miou.py)."""
  c = finetune_defaults()
  set_objective(c, "segmentation")  # its block: classes, UperNet's widths, layer decay 0.65
  # Image and label map together (data/segmentation.py); augment.flip is shared.
  sa = segmentation.SegAugment()
  c.augment.update(dict(randaug_ops=0, seg=ml_collections.ConfigDict(dict(
      ratio_range=sa.ratio_range, base_aspect=sa.base_aspect, cat_max_ratio=sa.cat_max_ratio,
      photometric=sa.photometric))))
  c.data.update(dict(name="scene_parse150", eval_split="validation", image_size=512,
                     eval_resize=0))
  c.batch_size = 16
  c.total_steps = 160_000
  c.optim.update(dict(base_lr=1e-4, lr_base_batch=16, warmup_steps=1500, warmup_epochs=0,
                      min_lr=0.0))
  c.eval_every = 16_000
  c.checkpoint_every = 4000
  c.best_metric = "eval/miou"
  return c


def linprobe_defaults() -> ml_collections.ConfigDict:
  """MAE's linear probing: the backbone frozen, BatchNorm (no affine) + linear
  head, LARS lr 0.1 x batch/256, batch 16384, 90 epochs (10 warmup), no weight
  decay, RandomResizedCrop + flip only."""
  c = finetune_defaults()
  c.freeze_backbone = True
  c.head_batchnorm = True
  c.head_init_std = 0.01
  c.layer_decay = 1.0
  c.label_smoothing = 0.0
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5,
                                           prob=1.0))
  c.augment.randaug_ops = 0
  c.model.drop_path = 0.0
  c.model.pool = "tok"          # the features pretraining read (MAE probes the cls token)
  c.batch_size = 16384
  c.total_epochs = 90
  c.optim = ml_collections.ConfigDict(dict(
      name="lars", base_lr=0.1, lr_base_batch=256, b1=0.9, b2=0.999, weight_decay=0.0,
      warmup_epochs=10, warmup_steps=0, min_lr=0.0, grad_clip=0.0))
  return c


def vit_imagenet_downstream(arg: str | None, variant: str, epochs: int,
                            linprobe: bool = False) -> ml_collections.ConfigDict:
  """The finetune_vit_* / linprobe_vit_* configs; ``init`` names the pretraining
  workdir (or pass --config.init=...); init= (empty) trains from scratch.
  ``model=from_init``: the checkpoint's backbone, any family (``finetune.py``'s
  way: its ``finetune`` hook, or as trained for linear probing), the recipe
  otherwise the same."""
  c = linprobe_defaults() if linprobe else finetune_defaults()
  a = parse_arg(arg, variant=variant, init="", pool=c.model.pool, model="")
  if a.model not in ("", "from_init"):
    raise ConfigError(f"model={a.model!r}: valid: from_init (the checkpoint's backbone), or "
                      f"leave it out for ViT-{variant}")
  c.model.variant = a.variant
  c.model.pool = a.pool
  if a.model == "from_init":
    c.model = parse_model("")
  c.init = a.init
  if not linprobe:
    c.total_epochs = epochs
  return c


def upernet_ade20k(arg: str | None, family: str, variant: str,
                   **overrides) -> ml_collections.ConfigDict:
  """The seg_upernet_* configs: ``segmentation_defaults`` with ``family``'s
  ``variant`` as fine-tuning takes it (its ``finetune`` hook: ViT global pooling,
  drop path), ``overrides`` for the family's own recipe; ``init=`` names the
  pretraining workdir (empty: from scratch), ``model=from_init`` takes the
  checkpoint's backbone, any family."""
  c = segmentation_defaults()
  a = parse_arg(arg, init="", model="")
  if a.model not in ("", "from_init"):
    raise ConfigError(f"model={a.model!r}: valid: from_init (the checkpoint's backbone), or "
                      f"leave it out for {family} {variant}")
  c.model = (parse_model("") if a.model == "from_init" else ml_collections.ConfigDict(
      models.finetune_model(dict(name=family, variant=variant))))
  c.init = a.init
  for key, value in overrides.items():
    c[key].update(value) if isinstance(value, dict) else setattr(c, key, value)
  return c


def vit_imagenet_scratch(arg: str | None, variant: str, epochs: int,
                         drop_path: float) -> ml_collections.ConfigDict:
  """The scratch_vit_* configs: MAE's supervised ViT-from-scratch recipe (MAE
  appendix A.2, Table 11), the baseline the paper's scratch rows quote: AdamW
  lr 1e-4 x batch/256, betas (0.9, 0.95), wd 0.3, batch 4096, 20 warmup epochs
  then cosine, no layer decay, EMA 0.9999, RandAug (9, 0.5), label smoothing
  0.1, mixup 0.8, cutmix 1.0; the epochs and drop path per size."""
  c = finetune_defaults()
  a = parse_arg(arg, variant=variant, pool=c.model.pool)
  c.model.variant, c.model.pool, c.model.drop_path = a.variant, a.pool, drop_path
  c.layer_decay = 1.0           # (only applied to a loaded backbone anyway)
  c.ema_decay = 0.9999
  c.batch_size = 4096
  c.total_epochs = epochs
  c.optim.update(dict(base_lr=1e-4, b2=0.95, weight_decay=0.3, warmup_epochs=20))
  return c


def model_config(name: str, variant: str) -> ml_collections.ConfigDict:
  """``config.model`` for a backbone family: the ViT options of
  ``pretrain_defaults``, or name, variant and drop path for the others."""
  if name == "vit":
    return ml_collections.ConfigDict(dict(pretrain_defaults().model, variant=variant))
  return ml_collections.ConfigDict(dict(name=name, variant=variant, drop_path=0.0))


def parse_model(spec: str) -> ml_collections.ConfigDict:
  """``"convnext:T"`` -> the fine-tuning ``config.model`` of that backbone (for
  training from scratch); ``""`` -> take the backbone of ``config.init``."""
  if not spec:
    return ml_collections.ConfigDict(dict(name=transfer.FROM_INIT))
  name, sep, variant = spec.partition(":")
  if not sep or name not in models.backbone_names():
    raise ConfigError(f"model {spec!r}: expected NAME:VARIANT with NAME in "
                      f"{models.backbone_names()}, e.g. 'convnext:T' or 'vit:B/16'")
  return ml_collections.ConfigDict(models.finetune_model(model_config(name, variant).to_dict()))


# ConvNeXt and Swin put a LayerNorm right after their patchify stem. Where the
# corrupted input is exactly 0 (masked pixels hold the dataset mean) a fresh
# stem's output is exactly 0 and that LayerNorm's input gradient is 1/sqrt(eps),
# so the first parameter gradients are huge; clipping the gradient norm to 1
# keeps them from swamping AdamW's second moments (docs/backbones.md).
ENERGY_GRAD_CLIP = {"convnext": 1.0, "swin": 1.0}


def pretrain_defaults_for(name: str, variant: str) -> ml_collections.ConfigDict:
  """``pretrain_defaults`` with the backbone ``name`` / ``variant``."""
  c = pretrain_defaults()
  c.model = model_config(name, variant)
  c.optim.grad_clip = ENERGY_GRAD_CLIP.get(name, c.optim.grad_clip)
  return c


def imagenet_pretrain(arg: str | None, name: str, variant: str, epochs: int,
                      warmup_epochs: int) -> ml_collections.ConfigDict:
  """The vit_{s,b,l}.py / convnext_t.py / swin_t.py configs: the paper's recipe
  with task/variant arguments."""
  a = parse_arg(arg, task="mixed", variant=variant)
  c = pretrain_defaults_for(name, a.variant)
  set_task(c, a.task)
  c.total_epochs = epochs
  c.optim.warmup_epochs = warmup_epochs
  return c


def set_objective(c: ml_collections.ConfigDict, objective: str, task: str = "") -> None:
  """``c`` made a config of ``objective`` (``schema.set_objective``): its block
  replaces the previous objective's (sorting: fixed sin-cos position embeddings,
  MSE; MAE: mask ratio; ...)."""
  schema.set_objective(c, objective, task)


def set_task(c: ml_collections.ConfigDict, task: str) -> None:
  """The configs' ``:task=`` argument: a corruption spec for the energy objective,
  or an objective's short name (``sorting``, ``ae_<task>``, ``mae``:
  ``tasks.split``)."""
  set_objective(c, *tasks.split(task))


# The small models of the CPU demos (Fashion-MNIST) and tests (synthetic 16px),
# per family: variant and image size. ConvNeXt and Swin downsample by powers of
# two, so their demos resize the 28px images to 32.
DEMO_MODELS = {"vit": ("nano/7", 28), "convnext": ("nano", 32), "swin": ("nano", 32)}
TINY_MODELS = {"vit": ("mu/4", 16), "convnext": ("mu", 16), "swin": ("mu", 16)}


def small_model(family: str, table: dict) -> tuple[ml_collections.ConfigDict, int]:
  """(``config.model``, image size) of a demo/test model of ``family``."""
  if family not in table:
    raise ConfigError(f"model {family!r}: valid: {', '.join(table)}")
  variant, size = table[family]
  return model_config(family, variant), size


def small_pretrain(family: str, table: dict) -> tuple[ml_collections.ConfigDict, int]:
  """(``pretrain_defaults_for`` the family's small model, its image size)."""
  model, size = small_model(family, table)
  return pretrain_defaults_for(family, model.variant), size


def small_finetune_model(init: str, family: str, table: dict,
                         variant: str = "") -> tuple[ml_collections.ConfigDict, int]:
  """(``config.model``, image size) of a demo/test fine-tuning: with ``init``, the
  checkpoint's backbone and image size (``variant`` is ignored); else
  ``family``'s small model (or its ``variant``), from scratch."""
  if init and transfer.is_timm_file(init):
    return parse_model(""), transfer.read_timm_config(init)["input_size"][-1]
  if init:
    trained = checkpoints.read_config(checkpoints.find(init))
    return parse_model(""), trained.data.image_size
  model, size = small_model(family, table)
  model.variant = variant or model.variant
  return ml_collections.ConfigDict(models.finetune_model(model.to_dict())), size


def use_fashion_mnist(data: ml_collections.ConfigDict, image_size: int = 28) -> None:
  """The demos' data: Fashion-MNIST from Debian's IDX files (28px gray, resized to
  ``image_size``), test split for evaluation, no worker processes (the 2 cores are
  busy with the model)."""
  data.update(dict(source="fashion_mnist_offline", data_dir="~/tensorflow_datasets",
                   eval_split="test", image_size=image_size, channels=1, mean=[0.2860],
                   std=[0.3530], num_workers=0, eval_resize=0))
