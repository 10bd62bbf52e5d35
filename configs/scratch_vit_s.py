"""Train a ViT-S/16 on ImageNet-1k from scratch with MAE's supervised recipe
(``recipes.vit_imagenet_scratch``: the values, and why), 300 epochs.

  python -m ebm_pretrain.main --config=configs/scratch_vit_s.py \
      --config.data.data_dir=DIR --workdir=WORKDIR

Expected top-1 (not reproduced here, it needs accelerators): 79.6% (paper Table 3, its re-implementation; recipe not stated).
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.vit_imagenet_scratch(arg, variant="S/16", epochs=300, drop_path=0.1)
