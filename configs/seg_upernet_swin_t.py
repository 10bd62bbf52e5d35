"""UperNet on ADE20K from a pretrained Swin-T (its four stage outputs), with
Swin's own segmentation recipe on the BEiT / MAE protocol: AdamW lr 6e-5, wd
0.01, no layer decay, drop path 0.3, UperNet channels 512.

  python -m ebm_pretrain.main --config=configs/seg_upernet_swin_t.py \
      --config.init=PRETRAIN_WORKDIR --config.data.data_dir=DIR --workdir=SEG_WORKDIR

PRETRAIN_WORKDIR is a run of configs/swin_t.py (or empty: from scratch). At 512
px the 7 x 7 windows pad the maps (128, 64, 32, 16) as the official code does.
Expected mIoU: Swin-T UperNet with supervised ImageNet-1k weights reports 44.5
(single scale, Liu et al. 2021); the paper has no Swin row.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  c = recipes.upernet_ade20k(arg, "swin", "T", layer_decay=1.0, seg=dict(channels=512),
                             optim=dict(base_lr=6e-5, weight_decay=0.01))
  if c.model.get("name") == "swin":  # not for model=from_init
    c.model.drop_path = 0.3
  return c
