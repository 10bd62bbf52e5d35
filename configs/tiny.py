"""Tiny: a 2-layer ViT on synthetic 16px images, for tests and smoke runs (seconds).

  python -m ebm_pretrain.main --config=configs/tiny.py --workdir=/tmp/tiny

configs/tiny.py:model=convnext (or swin) picks ConvNeXt-mu (Swin-mu).
Expected: 4 steps, a checkpoint, metrics.jsonl, TensorBoard events and a
restoration grid in the workdir; nothing downloaded or read from disk.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, task="mixed", steps=4, model="vit")
  c, size = recipes.small_pretrain(a.model, recipes.TINY_MODELS)
  c.dtype = "float32"
  recipes.set_task(c, a.task)
  if "decoder" in c:  # (the objective's block: the ae_* / mae baselines' decoder)
    c.decoder.update(dict(width=32, depth=1, num_heads=2))
  if a.task == "mixed":
    c.task_kwargs.mask = "mask_grid4"
    c.task_kwargs.sr = "sr4"
  c.data.source = "synthetic"
  c.data.num_examples = 64
  c.data.image_size = size
  c.data.num_workers = 0
  c.batch_size = 8
  c.total_steps = a.steps
  c.optim.base_lr = 1e-3
  c.optim.lr_base_batch = 8
  c.optim.warmup_steps = 1
  c.log_every = 2
  c.checkpoint_every = 2
  c.image_every = 2
  c.image_count = 4
  c.eval_examples = 16
  c.eval_batch_size = 8
  return c
