"""Swin-T energy pretraining on ImageNet-1k (paper Table 6), with the recipe of
the ViT runs (Table A): the backbone unchanged, its normed and pooled features
into a bias-free Dense(1).

  python -m ebm_pretrain.main --config=configs/swin_t.py:task=mixed \
      --workdir=gs://BUCKET/swin_t --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  python -m ebm_pretrain.main --config=configs/finetune.py:init=gs://BUCKET/swin_t \
      --workdir=gs://BUCKET/swin_t_ft --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: task (default mixed; any corruption spec, e.g. sr16, mask_grid16),
variant (T, S, B, L). 224px images (window 7 needs maps of 56, 28, 14, 7); the
rest as configs/convnext_t.py.
Expected (paper Table 6): 82.2 top-1 after 200 pretraining + 100 fine-tuning
epochs, against 81.3 for 300 epochs from scratch.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.imagenet_pretrain(arg, "swin", "T", epochs=200, warmup_epochs=20)
