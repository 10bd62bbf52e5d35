"""Config helpers: argument parsing for ``get_config(arg)``, the shared pretraining
defaults, and validation that runs before anything is compiled."""
from __future__ import annotations

import ml_collections

from ebm_pretrain import corruptions, energy, models


class ConfigError(ValueError):
  """An invalid config; the message names the field."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"task=sr16,variant=S/16"`` -> ConfigDict, typed after ``defaults``."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r}: expected KEY=VALUE with KEY in "
                        f"{sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    out[key] = value
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
  c.loss = "smooth_l1"          # Listing 1; "mse" is Eq. 5
  c.alpha = ml_collections.ConfigDict(dict(init=0.1, learnable=True))

  c.data = ml_collections.ConfigDict(dict(
      source="tfds", name="imagenet2012", data_dir="", split="train", eval_split="validation",
      image_size=224, channels=3, mean=list(corruptions.IMAGENET_MEAN),
      std=list(corruptions.IMAGENET_STD), num_workers=8, idx_dir="", folder="",
      num_examples=0))  # num_examples: synthetic source only

  c.batch_size = 256            # global
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
  c.eval_examples = 0           # > 0: held-out restoration PSNR at the end of the run
  c.eval_batch_size = 256
  return c


def vit_imagenet_pretrain(arg: str | None, variant: str, epochs: int,
                          warmup_epochs: int) -> ml_collections.ConfigDict:
  """The vit_{s,b,l}.py configs: the paper's recipe with task/variant arguments."""
  a = parse_arg(arg, task="mixed", variant=variant)
  c = pretrain_defaults()
  c.model.variant = a.variant
  c.task = a.task
  c.total_epochs = epochs
  c.optim.warmup_epochs = warmup_epochs
  return c


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
    if m.get("posemb", "learn") not in ("learn", "sincos2d"):
      _fail("model.posemb", f"{m.posemb!r}; valid: learn, sincos2d")
    if m.get("remat", "none") not in models.vit.REMAT_POLICIES:
      _fail("model.remat", f"{m.remat!r}; valid: {', '.join(models.vit.REMAT_POLICIES)}")
  if config.objective == "energy":
    ratio = config.task_kwargs.get("ratio", None)
    if ratio is not None and not 0 < ratio < 1:
      _fail("task_kwargs.ratio", f"must be in (0, 1), got {ratio}")
    try:
      corruptions.parse_spec(config.task)
      make_corruption(config)
    except (ValueError, TypeError) as e:
      _fail("task", str(e))
    if config.task in ("colorize",) and config.data.channels != 3:
      _fail("task", f"colorize needs 3-channel data; data.channels={config.data.channels}")
    if not isinstance(config.inner_steps, int) or config.inner_steps < 1:
      _fail("inner_steps", f"must be an int >= 1, got {config.inner_steps!r}")
    if config.loss not in energy.LOSSES:
      _fail("loss", f"{config.loss!r}; valid: {', '.join(energy.LOSSES)}")
    if not config.alpha.init > 0:
      _fail("alpha.init", f"must be positive, got {config.alpha.init}")
  if config.batch_size < 1 or config.batch_size % num_devices:
    _fail("batch_size", f"{config.batch_size} is not divisible by the number of devices "
          f"({num_devices})")
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


def make_corruption(config):
  return corruptions.from_spec(config.task, mean=tuple(config.data.mean),
                               std=tuple(config.data.std), **config.task_kwargs.to_dict())
