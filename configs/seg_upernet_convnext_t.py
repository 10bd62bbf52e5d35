"""UperNet on ADE20K from a pretrained ConvNeXt-T (its four stage outputs), with
ConvNeXt's own segmentation recipe on the BEiT / MAE protocol: layer decay 0.9,
drop path 0.4, UperNet channels 512.

  python -m ebm_pretrain.main --config=configs/seg_upernet_convnext_t.py \
      --config.init=PRETRAIN_WORKDIR --config.data.data_dir=DIR --workdir=SEG_WORKDIR

PRETRAIN_WORKDIR is a run of configs/convnext_t.py (or empty: from scratch).
Expected mIoU: ConvNeXt-T UperNet with supervised ImageNet-1k weights reports
46.0 (single scale, Liu et al. 2022); the paper has no ConvNeXt row.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  c = recipes.upernet_ade20k(arg, "convnext", "T", layer_decay=0.9, seg=dict(channels=512))
  if c.model.get("name") == "convnext":  # not for model=from_init
    c.model.drop_path = 0.4
  return c
