"""Demo: a tiny ViT pretrained on Fashion-MNIST, on the CPU in minutes.

  python -m ebm_pretrain.main --config=configs/demo.py --workdir=workdirs/demo

Needs Debian's `dataset-fashion-mnist` (the IDX files in
/usr/share/datasets/fashion-mnist; else set --config.data.idx_dir). Builds the
ArrayRecord copy once in data_dir (~15 s), then trains ViT-nano/7 at 28px with
mixed corruptions (random masking, 4x SR, denoising; no colorization on gray
data). Produces workdirs/demo/{checkpoints, metrics.jsonl, tensorboard, images/}.
Expected: the loss falls well below the corrupted error, and the final held-out
evaluation prints a restored PSNR above the corrupted one (README, "Quick
start", has the figures measured on 2 cores).

  configs/demo.py:task=sr4        picks another pretext task.
  configs/demo.py:model=convnext  ConvNeXt-nano (or model=swin: Swin-nano) at 32px.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, task="mixed", model="vit", variant="", steps=1000)
  c, size = recipes.small_pretrain(a.model, recipes.DEMO_MODELS)
  c.model.variant = a.variant or c.model.variant
  if a.model == "vit":
    c.model.pool = "gap"
  c.dtype = "float32"  # bf16 is emulated, hence slow, on CPUs
  recipes.set_task(c, a.task)
  if "decoder" in c:  # (the objective's block: the ae_* / mae baselines' decoder)
    c.decoder.update(dict(width=64, depth=2, num_heads=4))
  if "alpha" in c:  # (the energy objectives')
    # alpha starts at 1, not 0.1: with 28px images and a small model, the input
    # gradient is small at first, so at 0.1 the restoration steps barely move and
    # the first hundreds of steps learn little (README, "Quick start").
    c.alpha.init = 1.0
  if a.task == "mixed":
    c.task_kwargs.mask = "mask_random_large"
    c.task_kwargs.sr = "sr4"
  recipes.use_fashion_mnist(c.data, size)
  c.batch_size = 64
  c.total_steps = a.steps
  c.optim.base_lr = 1e-3
  c.optim.lr_base_batch = 64
  c.optim.warmup_steps = 100
  c.log_every = 50
  c.checkpoint_every = 500
  c.image_every = 500
  c.eval_examples = 1000
  c.eval_batch_size = 200
  return c
