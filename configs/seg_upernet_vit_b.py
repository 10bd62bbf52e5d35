"""UperNet on ADE20K from a pretrained ViT-B/16: the semantic segmentation
transfer of paper Table 7 (the BEiT / MAE protocol: recipes.segmentation_defaults).

  python -m ebm_pretrain.main --config=configs/seg_upernet_vit_b.py \
      --config.init=PRETRAIN_WORKDIR --config.data.data_dir=DIR --workdir=SEG_WORKDIR

PRETRAIN_WORKDIR is a run of configs/vit_b.py; without --config.init the same
recipe trains from scratch. Needs ADE20K as TFDS scene_parse150 in ArrayRecord
format (the program prints how if it is missing). 160k iterations at batch 16,
512 x 512 crops, layer decay 0.65; features from blocks 3, 5, 7, 11 rescaled to
strides 4-32; eval/miou on the 2,000 validation images every 16k steps.
Expected mIoU (paper Table 7; not reproduced here, it needs accelerators): 47.7
after 800 pretraining epochs (MAE 48.1, MoCo v3 47.3, supervised 47.4).

  configs/seg_upernet_vit_b.py:init=DIR,model=from_init   the checkpoint's backbone, any family.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.upernet_ade20k(arg, "vit", "B/16")
