"""The config schema. :func:`base` declares, once, the keys every run has (model,
data, augmentation, optimizer and schedule, logging, checkpoints, evaluation,
failure handling), with the paper's pretraining values; the objective adds the
block it reads (its ``defaults``: the energy objective N, α and the loss, an
autoencoder its decoder, a classifier its head and label mixing) through
:func:`set_objective`, so a fine-tuning's ``config.json`` holds no pretraining
key. :func:`upgrade` is the one way a stored config (an older checkpoint's, a
study cell's) becomes today's."""
from __future__ import annotations

import functools

import ml_collections

from ebm_pretrain import corruptions, objectives
from ebm_pretrain.data import pipeline
from ebm_pretrain.errors import fail


def base() -> ml_collections.ConfigDict:
  """Every objective's keys: the paper's pretraining recipe (Table A) for a ViT
  on ImageNet-1k, without an objective's block."""
  c = ml_collections.ConfigDict()
  c.objective = ""              # a name in ebm_pretrain/objectives (registry): set_objective
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant="B/16", pool="tok", posemb="learn", drop_path=0.0,
      remat="none"))  # remat: none | full | dots | dots_no_batch (ViT blocks)
  c.dtype = "bfloat16"          # compute dtype; params stay float32
  c.param_dtype = "float32"

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
  # Failure handling (docs/failures.md): a resumed run with another config is
  # refused unless this is set (the changes are then recorded); a stalled energy
  # run is reported after this many log steps (0: never); a workdir's lock whose
  # heartbeat is older than this (seconds) belongs to a lost run.
  c.allow_config_change = False
  c.stall_log_steps = 5
  c.lock_stale_seconds = 300
  return c


@functools.cache
def base_keys() -> frozenset[str]:
  return frozenset(base().keys())


def set_objective(c: ml_collections.ConfigDict, objective: str, task: str = "") -> None:
  """Makes ``c`` a config of ``objective``: the block of the objective it had is
  dropped, ``objective``'s own added (its ``defaults``), and ``task`` (a
  corruption spec) set where that objective corrupts pixels."""
  cls = objectives.get_class(objective)
  for key in set(c.keys()) - base_keys():
    del c[key]
  c.objective = objective
  cls.defaults(c)
  if "task" in c:
    c.task = task
  elif task:
    fail("task", f"{task!r}: objective {objective!r} takes no corruption task")


def block_keys(objective: str) -> frozenset[str]:
  """The top-level keys ``objective``'s block adds to :func:`base`."""
  c = base()
  set_objective(c, objective)
  return frozenset(c.keys()) - base_keys()


def owners(key: str) -> list[str]:
  """The objectives whose block declares the top-level ``key``."""
  return [name for name in objectives.names() if key in block_keys(name)]


# Sub-blocks a stored config replaces whole rather than merging key by key: a
# model, a task's options and a set of evaluators are each one choice.
_WHOLE = ("model", "task_kwargs", "evals")


def upgrade(stored: dict) -> ml_collections.ConfigDict:
  """A stored config (an older checkpoint's ``config.json``, a study cell's) as
  today's: the objective names of configs written before ``config.objective``
  named every objective (``tasks.upgrade``); keys declared since take their
  defaults; keys its objective does not read (the flat schema gave every run
  every key) are dropped."""
  from ebm_pretrain import tasks
  stored = dict(stored)
  tasks.upgrade(stored)
  c = base()
  set_objective(c, stored.get("objective") or "energy")
  out = c.to_dict()

  def merge(into: dict, new: dict, top: bool) -> None:
    for k, v in new.items():
      if top and k not in into:
        continue
      if isinstance(v, dict) and isinstance(into.get(k), dict) and k not in _WHOLE:
        merge(into[k], v, False)
      else:
        into[k] = v
  merge(out, stored, True)
  return ml_collections.ConfigDict(out)
