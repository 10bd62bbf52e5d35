"""ViT-L/16 energy pretraining on ImageNet-1k with the paper's recipe (Table A).

  python -m ebm_pretrain.main --config=configs/vit_l.py --workdir=gs://BUCKET/vit_l \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Task by argument: configs/vit_l.py:task=sr16 (default mixed; also mask_grid16,
mask_random_large, denoise, colorize, ...). 800 epochs at batch 256, AdamW
(0.9, 0.95), wd 0.05, lr 1e-4 x batch/256 with 40 warmup epochs and cosine decay,
bf16 compute, RandomResizedCrop + flip, N=2 with a learnable alpha.
Needs imagenet2012 prepared for TFDS in ArrayRecord format (the program prints
how if it is missing). Expected: ImageNet fine-tuning top-1 85.6 after 800 pretraining + 50 fine-tuning epochs (paper Table 3, Mixed; the paper reports no 200-epoch ViT-L).
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.imagenet_pretrain(arg, "vit", "L/16", epochs=800, warmup_epochs=40)
