"""ConvNeXt-T energy pretraining on ImageNet-1k (paper Table 6), with the recipe of
the ViT runs (Table A): the backbone unchanged, its pooled and normed features
into a bias-free Dense(1).

  python -m ebm_pretrain.main --config=configs/convnext_t.py:task=mixed \
      --workdir=gs://BUCKET/convnext_t --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  python -m ebm_pretrain.main --config=configs/finetune.py:init=gs://BUCKET/convnext_t \
      --workdir=gs://BUCKET/convnext_t_ft --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: task (default mixed; any corruption spec, e.g. sr16, mask_grid16),
variant (T, S, B, L). 200 epochs at batch 256, AdamW (0.9, 0.95), wd 0.05, lr 1e-4
x batch/256, 20 warmup epochs, bf16 compute, N=2 with a learnable alpha.
Expected (paper Table 6): 82.7 top-1 after 200 pretraining + 100 fine-tuning
epochs, against 82.1 for 300 epochs from scratch.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.imagenet_pretrain(arg, "convnext", "T", epochs=200, warmup_epochs=20)
