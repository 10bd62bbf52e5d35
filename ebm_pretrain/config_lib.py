"""Config helpers: argument parsing for ``get_config(arg)``, the shared pretraining
defaults, and validation that runs before anything is compiled."""
from __future__ import annotations

import ml_collections

import jax
import jax.numpy as jnp

from ebm_pretrain import checkpoints, corruptions, energy, models, sorting


class ConfigError(ValueError):
  """An invalid config; the message names the field."""


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_kwargs(config) -> dict:
  """Everything in ``config.model`` besides name/variant, plus the dtypes: the
  keyword arguments of the backbone factory."""
  kw = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "variant")}
  return dict(kw, dtype=DTYPES[config.dtype], param_dtype=DTYPES[config.param_dtype])


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
  c.objective = "energy"
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant="B/16", pool="tok", posemb="learn", drop_path=0.0,
      remat="none"))  # remat: none | full | dots | dots_no_batch (ViT blocks)
  c.dtype = "bfloat16"          # compute dtype; params stay float32
  c.param_dtype = "float32"

  c.task = "mixed"              # a corruption spec, see ebm_pretrain/corruptions.py
  c.task_kwargs = ml_collections.ConfigDict()
  c.inner_steps = 2             # N
  c.unroll = True               # unroll the inner fori_loop (faster at N=2)
  c.inner_remat = False         # jax.checkpoint each inner step's input gradient
  c.stepwise_grads = True       # each step's outer gradient before the next step (less memory)
  c.loss = "smooth_l1"          # Listing 1; "mse" is Eq. 5
  c.alpha = ml_collections.ConfigDict(dict(init=0.1, learnable=True))
  # The ae_* / mae baselines' light decoder (MAE's ViT-B/L decoder: 512 wide, 8 deep).
  c.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16))

  c.data = ml_collections.ConfigDict(dict(
      source="tfds", name="imagenet2012", data_dir="", split="train", eval_split="validation",
      image_size=224, channels=3, mean=list(corruptions.IMAGENET_MEAN),
      std=list(corruptions.IMAGENET_STD), num_workers=8, idx_dir="", folder="",
      num_examples=0,     # synthetic source only
      train_fraction=1.0,  # train on a fixed random subset (e.g. 0.01 of the labels)
      eval_resize=0))     # eval: resize the short side to this (0: image_size), center crop

  c.init = ""                   # a checkpoint (workdir) to take the backbone from
  c.batch_size = 256            # global
  c.grad_accum_steps = 1        # micro-batches per step (same global batch, less memory)
  c.total_epochs = 200
  c.total_steps = 0             # > 0 overrides total_epochs
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1e-4, lr_base_batch=256, b1=0.9, b2=0.95, weight_decay=0.05,
      warmup_epochs=20, warmup_steps=0, min_lr=0.0, grad_clip=0.0))

  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.image_every = 1000          # restoration grids (PNG + TensorBoard)
  c.image_count = 8
  c.eval_examples = 0           # > 0: held-out evaluation of that many images; -1: all
  c.eval_batch_size = 256
  c.eval_every = 0              # steps; 0: only at the end of the run
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
  c.augment = ml_collections.ConfigDict(dict(crop_scale=(0.08, 1.0), flip=True, randaug_ops=2,
                                             randaug_magnitude=9.0, randaug_std=0.5))
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
  workdir (or pass --config.init=...); init= (empty) trains from scratch."""
  c = linprobe_defaults() if linprobe else finetune_defaults()
  a = parse_arg(arg, variant=variant, init="", pool=c.model.pool)
  c.model.variant = a.variant
  c.model.pool = a.pool
  c.init = a.init
  if not linprobe:
    c.total_epochs = epochs
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
    return ml_collections.ConfigDict(dict(name=FROM_INIT))
  name, sep, variant = spec.partition(":")
  if not sep or name not in models.backbone_names():
    raise ConfigError(f"model {spec!r}: expected NAME:VARIANT with NAME in "
                      f"{models.backbone_names()}, e.g. 'convnext:T' or 'vit:B/16'")
  return ml_collections.ConfigDict(models.finetune_model(model_config(name, variant).to_dict()))


# ConvNeXt and Swin put a LayerNorm right after their patchify stem. Where the
# corrupted input is exactly 0 (masked pixels hold the dataset mean) a fresh
# stem's output is exactly 0 and that LayerNorm's input gradient is 1/sqrt(eps):
# measured at init, the energy's input gradient reached 8e5 (ConvNeXt) and 4e5
# (Swin) on a half-zeroed image against 5 for ViT, and the first parameter
# gradients 2e8. Clipping the gradient norm to 1 keeps those first steps from
# swamping AdamW's second moments (demo scale, ConvNeXt-nano, 100 steps: loss
# 0.192 vs 0.213 unclipped, restored PSNR +0.39 dB vs +0.01 dB).
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


# The pretext task that corrupts position embeddings instead of pixels, and the
# baselines (ebm_pretrain/autoencoders.py): ae_<task> and MAE.
SORTING = "sorting"
AE_PREFIX = "ae_"
MAE = "mae"


def is_baseline(task: str) -> bool:
  return task == MAE or task.startswith(AE_PREFIX)


def set_task(c: ml_collections.ConfigDict, task: str) -> None:
  """``c.task = task``; patch sorting also needs the fixed sin-cos position
  embeddings it shuffles and its MSE loss (Eq. 7); its autoencoder baseline an
  encoder without position embeddings; MAE its mask ratio."""
  c.task = task
  if task in (SORTING, AE_PREFIX + SORTING):
    c.model.posemb = "sincos2d" if task == SORTING else "none"
    c.loss = "mse"
    c.task_kwargs = ml_collections.ConfigDict(sorting.DEFAULTS)
  elif task == MAE:
    c.task_kwargs = ml_collections.ConfigDict(dict(mask_ratio=0.75))


# config.model.name when a fine-tuning config takes the checkpoint's backbone.
FROM_INIT = ""


def resolve_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``model`` filled in from the ``init`` checkpoint when the
  config leaves the backbone to it (``model.name == ""``): the checkpoint's
  architecture, made ready for fine-tuning by its family's ``finetune`` hook
  (``models.register_backbone``). Entries set in ``config.model`` win."""
  if config.model.name != FROM_INIT:
    return config
  if not config.get("init"):
    _fail("model.name", "empty, which means 'the backbone of config.init', but config.init "
          "is empty too: set --config.init=PRETRAINING_WORKDIR, or name a model to train "
          "from scratch (e.g. --config.model.name=vit --config.model.variant=S/16)")
  trained = checkpoints.read_config(checkpoints.find(config.init)).model.to_dict()
  model = models.finetune_model(trained)
  model.update({k: v for k, v in config.model.to_dict().items() if k != "name"})
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = ml_collections.ConfigDict(model)
  return config


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


def small_finetune_model(init: str, family: str,
                         table: dict) -> tuple[ml_collections.ConfigDict, int]:
  """(``config.model``, image size) of a demo/test fine-tuning: with ``init``, the
  checkpoint's backbone and image size; else ``family``'s small model, from scratch."""
  if init:
    trained = checkpoints.read_config(checkpoints.find(init))
    return parse_model(""), trained.data.image_size
  model, size = small_model(family, table)
  return ml_collections.ConfigDict(models.finetune_model(model.to_dict())), size


def use_fashion_mnist(data: ml_collections.ConfigDict, image_size: int = 28) -> None:
  """The demos' data: Fashion-MNIST from Debian's IDX files (28px gray, resized to
  ``image_size``), test split for evaluation, no worker processes (the 2 cores are
  busy with the model)."""
  data.update(dict(source="fashion_mnist_offline", data_dir="~/tensorflow_datasets",
                   eval_split="test", image_size=image_size, channels=1, mean=[0.2860],
                   std=[0.3530], num_workers=0, eval_resize=0))


def _fail(field: str, msg: str):
  raise ConfigError(f"config.{field}: {msg}")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Checks everything that would otherwise fail late or deep inside XLA."""
  m = config.model
  if m.name not in models.backbone_names():
    _fail("model.name", f"unknown model {m.name!r}; valid: {', '.join(models.backbone_names())}")
  if m.name == "vit":
    try:
      patch = models.decode_variant(m.variant)["patch_size"]
    except ValueError as e:
      _fail("model.variant", str(e))
    size = config.data.image_size
    if size % patch:
      _fail("model.variant", f"patch size {patch} does not divide data.image_size={size}")
    if m.get("pool", "tok") not in ("tok", "gap"):
      _fail("model.pool", f"{m.pool!r}; valid: tok, gap")
    if m.get("posemb", "learn") not in models.vit.POSEMBS:
      _fail("model.posemb", f"{m.posemb!r}; valid: {', '.join(models.vit.POSEMBS)}")
    if m.get("remat", "none") not in models.vit.REMAT_POLICIES:
      _fail("model.remat", f"{m.remat!r}; valid: {', '.join(models.vit.REMAT_POLICIES)}")
  _check_model_builds(config)  # any family: variant, options and image size
  if config.objective == "energy":
    if config.task == SORTING:
      _validate_sorting(config)
    elif is_baseline(config.task):
      _validate_baseline(config)
    else:
      ratio = config.task_kwargs.get("ratio", None)
      if ratio is not None and not 0 < ratio < 1:
        _fail("task_kwargs.ratio", f"must be in (0, 1), got {ratio}")
      try:
        corruptions.parse_spec(config.task)
        make_corruption(config)
      except (ValueError, TypeError) as e:
        _fail("task", f"{e} (or {SORTING!r})")
      if config.task in ("colorize",) and config.data.channels != 3:
        _fail("task", f"colorize needs 3-channel data; data.channels={config.data.channels}")
    if not isinstance(config.inner_steps, int) or config.inner_steps < 1:
      _fail("inner_steps", f"must be an int >= 1, got {config.inner_steps!r}")
    if config.loss not in energy.LOSSES:
      _fail("loss", f"{config.loss!r}; valid: {', '.join(energy.LOSSES)}")
    if not config.alpha.init > 0:
      _fail("alpha.init", f"must be positive, got {config.alpha.init}")
  if not isinstance(config.batch_size, int) or config.batch_size < 1:
    _fail("batch_size", f"must be a positive int, got {config.batch_size!r}")
  if config.batch_size % num_devices:
    _fail("batch_size", f"{config.batch_size} is not divisible by the number of devices "
          f"({num_devices})")
  accum = config.get("grad_accum_steps", 1)
  if not isinstance(accum, int) or accum < 1 or config.batch_size % (num_devices * accum):
    _fail("grad_accum_steps", f"{accum!r}: batch_size ({config.batch_size}) must split into "
          f"grad_accum_steps micro-batches with an equal share on each of {num_devices} devices")
  if config.objective == "supervised":
    if config.get("num_classes", 0) < 2:
      _fail("num_classes", f"must be >= 2, got {config.get('num_classes')}")
    decay = config.get("layer_decay", 1.0)
    if not 0 < decay <= 1:
      _fail("layer_decay", f"must be in (0, 1], got {decay}")
    if not 0 <= config.get("label_smoothing", 0.0) < 1:
      _fail("label_smoothing", f"must be in [0, 1), got {config.label_smoothing}")
  if config.get("optim", {}).get("name", "adamw") not in ("adamw", "lars"):
    _fail("optim.name", f"{config.optim.name!r}; valid: adamw, lars")
  if not 0 < config.data.get("train_fraction", 1.0) <= 1:
    _fail("data.train_fraction", f"must be in (0, 1], got {config.data.train_fraction}")
  if config.get("eval_examples", 0) and config.eval_batch_size % num_devices:
    _fail("eval_batch_size", f"{config.eval_batch_size} is not divisible by the number of "
          f"devices ({num_devices})")
  if config.batch_size % process_count:
    _fail("batch_size", f"{config.batch_size} is not divisible by the number of processes "
          f"({process_count})")
  for f in ("dtype", "param_dtype"):
    if config[f] not in ("float32", "bfloat16", "float16"):
      _fail(f, f"{config[f]!r}; valid: float32, bfloat16, float16")
  if len(config.data.mean) != config.data.channels or len(config.data.std) != config.data.channels:
    _fail("data.mean", f"mean/std need {config.data.channels} values (data.channels)")
  if config.total_steps < 0 or config.total_epochs <= 0 and config.total_steps == 0:
    _fail("total_steps", "set total_steps > 0 or total_epochs > 0")
  for f in ("log_every", "checkpoint_every", "image_every"):
    if config[f] < 1:
      _fail(f, f"must be >= 1, got {config[f]}")


def _validate_sorting(config) -> None:
  m = config.model
  if m.name != "vit" or m.get("posemb") != "sincos2d":
    _fail("task", f"sorting shuffles fixed sin-cos position embeddings: it needs "
          f"model.name=vit with model.posemb=sincos2d, got {m.name} posemb={m.get('posemb')!r}")
  unknown = set(config.task_kwargs) - {"keep_ratio", "edge_mask"}
  if unknown:
    _fail("task_kwargs", f"{sorted(unknown)}: sorting takes keep_ratio and edge_mask")
  if not 0 < config.task_kwargs.get("keep_ratio", 0.5) <= 1:
    _fail("task_kwargs.keep_ratio", f"must be in (0, 1], got {config.task_kwargs.keep_ratio}")
  if config.loss != "mse":
    _fail("loss", f"sorting's loss is the MSE of Eq. 7, got {config.loss!r}")


def _validate_baseline(config) -> None:
  if config.model.name != "vit":
    _fail("task", f"{config.task}: the autoencoder baselines are ViT-only (MAE's design), got "
          f"model.name={config.model.name}")
  if config.task == MAE:
    if not 0 < config.task_kwargs.get("mask_ratio", 0.75) < 1:
      _fail("task_kwargs.mask_ratio", f"must be in (0, 1), got {config.task_kwargs.mask_ratio}")
  elif config.task == AE_PREFIX + SORTING:
    if config.model.get("posemb") != "none":
      _fail("model.posemb", "ae_sorting's encoder has no position embedding (posemb=none), "
            f"got {config.model.posemb!r}")
  else:
    try:
      corruptions.parse_spec(config.task[len(AE_PREFIX):])
      corruptions.from_spec(config.task[len(AE_PREFIX):], mean=tuple(config.data.mean),
                            std=tuple(config.data.std), **config.task_kwargs.to_dict())
    except (ValueError, TypeError) as e:
      _fail("task", f"{config.task}: {e}")
  for f in ("width", "depth", "num_heads"):
    if config.decoder[f] < 1:
      _fail(f"decoder.{f}", f"must be >= 1, got {config.decoder[f]}")
  if config.decoder.width % config.decoder.num_heads:
    _fail("decoder.width", f"{config.decoder.width} is not divisible by decoder.num_heads")


def _check_model_builds(config) -> None:
  """Traces the backbone once on the configured image size (shapes only), so that a
  variant, option or image size it cannot take fails here with its message."""
  m, d = config.model, config.data
  kwargs = {k: v for k, v in m.to_dict().items() if k not in ("name", "variant")}
  images = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  try:
    backbone = models.get_backbone(m.name, m.variant, **kwargs)
    jax.eval_shape(backbone.init, jax.random.key(0), images)
  except (ValueError, TypeError) as e:
    _fail("model", f"{m.name} {m.variant!r} at data.image_size={d.image_size}: {e}")


def make_corruption(config):
  return corruptions.from_spec(config.task, mean=tuple(config.data.mean),
                               std=tuple(config.data.std), **config.task_kwargs.to_dict())
