"""ViT-S/16 energy pretraining on ImageNet-1k with the paper's recipe (Table A).

  python -m ebm_pretrain.main --config=configs/vit_s.py --workdir=gs://BUCKET/vit_s \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Task by argument: configs/vit_s.py:task=sr16 (default mixed; also mask_grid16,
mask_random_large, denoise, colorize, ...). 200 epochs at batch 256, AdamW
(0.9, 0.95), wd 0.05, lr 1e-4 x batch/256 with 20 warmup epochs and cosine decay,
bf16 compute, RandomResizedCrop + flip, N=2 with a learnable alpha.
Needs imagenet2012 prepared for TFDS in ArrayRecord format (the program prints
how if it is missing). Expected: ImageNet fine-tuning top-1 81.2 after 200 pretraining + 200 fine-tuning epochs (paper Table 3, Mixed).
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.imagenet_pretrain(arg, "vit", "S/16", epochs=200, warmup_epochs=20)
