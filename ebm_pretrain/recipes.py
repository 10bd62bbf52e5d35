"""Recipes: what ``configs/*.py`` import. Argument parsing for ``get_config(arg)``,
the paper's pretraining / fine-tuning / linear-probing recipes (every config key
is declared here, once), the per-family tables of the demo and test models, and
``set_task``, which applies an objective's short name and its config defaults.
Checks live in ``validate``; reading checkpoints in ``checkpoints``."""
from __future__ import annotations

import ml_collections

from ebm_pretrain import checkpoints, corruptions, models, objectives, tasks, transfer
from ebm_pretrain.errors import ConfigError
from ebm_pretrain.data import pipeline, segmentation


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"task=sr16,variant=S/16"`` -> ConfigDict, typed after ``defaults``."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r}: expected KEY=VALUE with KEY in "
                        f"{sorted(defaults)}")
    out[key] = _typed_like(defaults[key], value)
  return out


def _typed_like(default, value: str):
  """The string ``value`` as the type of ``default`` (bool, int, float or str)."""
  if isinstance(default, bool):
    return value.lower() in ("1", "true", "yes")
  if isinstance(default, (int, float)):
    return type(default)(value)
  return value


def override(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``"a.b=v,c=w"`` applied, values typed after the
  current ones (the benchmark's ``--variant``)."""
  out = config.copy_and_resolve_references()
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = out
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not sep or not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f"override {item!r}: expected KEY=VALUE with KEY a field of the config")
    node[leaf] = _typed_like(node[leaf], value)
  return out


def pretrain_defaults() -> ml_collections.ConfigDict:
  """The paper's pretraining recipe (Table A) for a ViT on ImageNet-1k."""
  c = ml_collections.ConfigDict()
  c.objective = "energy"        # a name in ebm_pretrain/objectives (registry)
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant="B/16", pool="tok", posemb="learn", drop_path=0.0,
      remat="none"))  # remat: none | full | dots | dots_no_batch (ViT blocks)
  c.dtype = "bfloat16"          # compute dtype; params stay float32
  c.param_dtype = "float32"

  c.task = "mixed"              # a corruption spec (ebm_pretrain/corruptions.py); "" for none
  c.task_kwargs = ml_collections.ConfigDict()
  c.inner_steps = 2             # N
  c.unroll = True               # unroll the inner fori_loop (faster at N=2)
  c.inner_remat = False         # jax.checkpoint each inner step's input gradient
  c.stepwise_grads = True       # each step's outer gradient before the next step (less memory)
  c.loss = "smooth_l1"          # Listing 1; "mse" is Eq. 5
  c.alpha = ml_collections.ConfigDict(dict(init=0.1, learnable=True))
  c.energy_reg = 1.0            # objective=contrastive (N = 0): weight of E⁺² + E⁻²
  # The ae_* / mae baselines' light decoder (MAE's ViT-B/L decoder: 512 wide, 8 deep).
  c.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16))

  c.data = ml_collections.ConfigDict(dict(
      source="tfds", name="imagenet2012", data_dir="", split="train", eval_split="validation",
      image_size=224, channels=3, mean=list(corruptions.IMAGENET_MEAN),
      std=list(corruptions.IMAGENET_STD), num_workers=8, idx_dir="", folder="",
      num_examples=0,     # synthetic and garment_scenes sources: how many (0: default)
      scene_size=64,      # garment_scenes: the side of a scene before the training crop
      train_fraction=1.0,  # train on a fixed random subset (e.g. 0.01 of the labels)
      eval_resize=0,      # eval: resize the short side to this (0: image_size), center crop
      subset_seed=0,      # which train_fraction subset
      holdout=0,          # training examples held out for validation (eval_split="holdout")
      eval_folder=""))    # source=folder: the eval images (default: folder)
  # Training augmentation: RandomResizedCrop + flip; RandAug when randaug_ops > 0.
  a = pipeline.Augment()
  c.augment = ml_collections.ConfigDict(dict(crop_scale=a.crop_scale, flip=a.flip, randaug_ops=0,
                                             randaug_magnitude=9.0, randaug_std=0.5))

  c.init = ""                   # a checkpoint (workdir) to take the backbone from
  c.batch_size = 256            # global
  c.grad_accum_steps = 1        # micro-batches per step (same global batch, less memory)
  c.total_epochs = 200
  c.total_steps = 0             # > 0 overrides total_epochs
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=1e-4, lr_base_batch=256, b1=0.9, b2=0.95, weight_decay=0.05,
      warmup_epochs=20, warmup_steps=0, min_lr=0.0, grad_clip=0.0))
  # > 0: keep an exponential moving average of the parameters (decay per step);
  # evaluations, best/ and pretrained.load then use the average (MAE's scratch recipe).
  c.ema_decay = 0.0

  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  # How long an asynchronous checkpoint write may take before the run stops with
  # a CheckpointError (Orbax: 10 minutes). Its clock runs while the process is
  # paused (SIGSTOP, a suspended job), so a pause mid-write longer than this ends
  # the run (rerun to resume); shorter pauses are survived.
  c.checkpoint_timeout_s = 3600
  c.image_every = 1000          # restoration grids (PNG + TensorBoard)
  c.image_count = 8
  c.eval_examples = 0           # > 0: held-out evaluation of that many images; -1: all
  c.eval_batch_size = 256
  c.eval_every = 0              # steps; 0: only at the end of the run
  # Evaluators run during training (ebm_pretrain/evaluators): {name: dict(type=...,
  # every=steps, examples=N, ...)}; empty: the objective's default (energy: psnr,
  # sorting: sorting, autoencoders: loss, supervised: top1), with eval_every and
  # eval_examples.
  c.evals = ml_collections.ConfigDict()
  c.best_metric = ""            # e.g. "eval/top1": also keep the best checkpoint in best/
  c.best_mode = "max"           # or "min" (a loss)
  # Failure handling (README): a resumed run with another config is refused
  # unless this is set (the changes are then recorded); a stalled energy run is
  # reported after this many log steps (0: never); a workdir's lock whose
  # heartbeat is older than this (seconds) belongs to a lost run.
  c.allow_config_change = False
  c.stall_log_steps = 5
  c.lock_stale_seconds = 300
  return c


def finetune_defaults() -> ml_collections.ConfigDict:
  """The paper's fine-tuning recipe (Table A, after MAE) for a ViT on ImageNet-1k:
  AdamW lr 1e-3 x batch/256, betas (0.9, 0.999), wd 0.05, layer decay 0.75,
  batch 1024, 5 warmup epochs then cosine, drop path 0.1, RandAug (9, 0.5),
  label smoothing 0.1, mixup 0.8, cutmix 1.0, global-pool head; top-1 on a
  224 center crop of the image resized to 256."""
  c = pretrain_defaults()
  c.objective = "supervised"
  c.num_classes = 1000
  c.model.pool = "gap"
  c.model.drop_path = 0.1
  c.head_init_std = 2e-5
  c.head_batchnorm = False
  c.freeze_backbone = False
  c.layer_decay = 0.75
  c.label_smoothing = 0.1
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                           prob=1.0))
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
  c.objective = "segmentation"
  c.num_classes = 150
  # UperNet's width (BEiT / MAE: 768); the auxiliary FCN head's width and loss weight.
  c.seg = ml_collections.ConfigDict(dict(channels=768, aux_channels=256, aux_weight=0.4))
  c.layer_decay = 0.65
  c.label_smoothing = 0.0
  c.mixup.update(dict(mixup_alpha=0.0, cutmix_alpha=0.0))
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
  """``c.objective = objective``, ``c.task = task``, and the objective's own config
  defaults (sorting: fixed sin-cos position embeddings, MSE; MAE: mask ratio)."""
  c.objective, c.task = objective, task
  objectives.get_class(objective).defaults(c)


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




def complete(stored: dict) -> ml_collections.ConfigDict:
  """A checkpoint's config over today's recipe for its objective: keys declared
  since the checkpoint was written take their defaults, an old objective name
  its new one (``tasks.upgrade``)."""
  stored = dict(stored)
  tasks.upgrade(stored)
  base = finetune_defaults() if stored.get("objective") == "supervised" else pretrain_defaults()
  out = base.to_dict()

  def merge(into: dict, new: dict) -> None:
    for k, v in new.items():
      if isinstance(v, dict) and isinstance(into.get(k), dict) and k not in ("model", "task_kwargs",
                                                                              "evals"):
        merge(into[k], v)
      else:
        into[k] = v
  merge(out, stored)
  return ml_collections.ConfigDict(out)
