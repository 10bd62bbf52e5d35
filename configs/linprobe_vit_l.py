"""Linear probing of a pretrained ViT-L/16 on ImageNet-1k (MAE's recipe): frozen
backbone, BatchNorm without affine + linear head, LARS, batch 16384, 90 epochs.

  python -m ebm_pretrain.main --config=configs/linprobe_vit_l.py \
      --config.init=PRETRAIN_WORKDIR --config.data.data_dir=DIR --workdir=LINPROBE_WORKDIR

Use --config.grad_accum_steps=K to reach batch 16384 on small hosts.

  configs/linprobe_vit_l.py:init=DIR,model=from_init   the checkpoint's backbone, any family.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.vit_imagenet_downstream(arg, variant="L/16", epochs=90, linprobe=True)
