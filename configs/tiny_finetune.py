"""Tiny fine-tuning: the configs/tiny.py ViT on its synthetic 16px images, whose
label is the quadrant of a disc (4 classes). For tests and smoke runs (seconds).

  python -m ebm_pretrain.main --config=configs/tiny.py --workdir=/tmp/tiny
  python -m ebm_pretrain.main --config=configs/tiny_finetune.py \
      --config.init=/tmp/tiny --workdir=/tmp/tiny_ft

Expected: 4 steps of the full recipe (layer decay, drop path, RandAug, mixup,
cutmix, label smoothing), an eval/top1 line, checkpoints/ and best/.
  configs/tiny_finetune.py:linprobe=True   the linear-probing recipe instead.
  configs/tiny_finetune.py:init=/tmp/tiny  the checkpoint's backbone (any family).
  configs/tiny_finetune.py:model=swin      Swin-mu (or convnext) from scratch.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, init="", steps=4, linprobe=False, model="vit")
  c = recipes.linprobe_defaults() if a.linprobe else recipes.finetune_defaults()
  c.init = a.init
  c.num_classes = 4
  if a.init or a.model != "vit":  # the checkpoint's backbone, or another family's
    c.model, _ = recipes.small_finetune_model(a.init, a.model, recipes.TINY_MODELS)
  else:  # ViT-mu/4 with the recipe's (or linear probing's) model options
    c.model.variant = "mu/4"
  c.dtype = "float32"
  c.data.source = "synthetic"
  c.data.num_examples = 64
  c.data.image_size = 16  # every family's tiny model at the same size
  c.data.eval_resize = 0
  c.data.num_workers = 0
  c.batch_size = 8
  c.total_steps = a.steps
  c.optim.lr_base_batch = 8
  c.optim.warmup_steps = 1
  c.log_every = 2
  c.checkpoint_every = 2
  c.eval_examples = 16
  c.eval_batch_size = 8
  c.eval_every = 2
  return c
