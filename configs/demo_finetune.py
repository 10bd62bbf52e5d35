"""Demo: fine-tune the configs/demo.py pretraining on 1% or 10% of the Fashion-MNIST
labels, or train the same ViT-nano/7 from scratch on them (2 CPU cores, minutes).

  python -m ebm_pretrain.main --config=configs/demo_finetune.py:fraction=0.01,init=workdirs/demo \
      --workdir=workdirs/demo_ft_1pct
  python -m ebm_pretrain.main --config=configs/demo_finetune.py:fraction=0.01 \
      --workdir=workdirs/demo_scratch_1pct

The model is the checkpoint's (any family) when init is given as an argument
(configs/demo_finetune.py:init=workdirs/demo_convnext); from scratch, model=vit
(ViT-nano/7, the default), convnext or swin (their nano variants at 32px);
``variant=`` another size of that family (e.g. model=vit,variant=S/4).
launch/demo_finetune.sh runs all four (1% and 10%, pretrained and scratch) and
prints the table of test-split top-1 that the README gives.

The recipe is the paper's optimizer and regularisation (AdamW (0.9, 0.999), wd
0.05, layer decay 0.75, drop path 0.1, label smoothing 0.1, warmup + cosine)
without its data augmentation: at 28px with 600 labels and ~500 steps, RandAug
+ mixup/cutmix + random crops underfit (docs/study.md, "The demo fine-tuning").
``:full_augment=True`` restores the Table A augmentation. ``:linprobe=True``
probes the frozen backbone instead (MAE's linear probing: BatchNorm + linear
head on the frozen features; AdamW, not LARS, at this scale; any family's
checkpoint).
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, fraction=0.01, init="", model="vit", variant="", steps=0, epochs=0,
                           full_augment=False, linprobe=False)
  c = recipes.linprobe_defaults() if a.linprobe else recipes.finetune_defaults()
  c.init = a.init
  c.num_classes = 10
  c.model, size = recipes.small_finetune_model(a.init, a.model, recipes.DEMO_MODELS, a.variant)
  c.dtype = "float32"
  recipes.use_fashion_mnist(c.data, size)
  c.data.train_fraction = a.fraction
  if not a.full_augment:
    c.mixup.mixup_alpha = c.mixup.cutmix_alpha = 0.0
    c.augment.update(dict(randaug_ops=0, crop_scale=(1.0, 1.0), flip=False))
  else:
    c.augment.crop_scale = (0.35, 1.0)  # 28px images: MAE's 0.08 leaves too little
  c.batch_size = 64
  # About the same number of steps at either fraction (1%: 600 images, 10%: 6000).
  c.total_epochs = a.epochs or (50 if a.fraction <= 0.02 else 8)
  if a.steps:
    c.total_steps = a.steps
  # The linear probe keeps MAE's frozen backbone and BatchNorm head but not its
  # LARS: at batch 64 its lr (0.1 x 64/256) with the 0.001 trust coefficient
  # leaves the head near its init after ~500 steps (near chance;
  # docs/backbones.md); AdamW without weight decay trains it.
  c.optim.update(name="adamw", base_lr=1e-3, lr_base_batch=64)
  if a.linprobe:
    c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0
  c.optim.warmup_steps = 50
  c.log_every = 50
  c.checkpoint_every = 200
  c.eval_examples = -1  # the whole test split (10000 images)
  c.eval_batch_size = 500
  c.eval_every = 0      # at the end
  return c
