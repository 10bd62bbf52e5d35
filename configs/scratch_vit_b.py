"""Train a ViT-B/16 on ImageNet-1k from scratch, supervised: MAE's recipe for its
scratch baseline (MAE appendix A.2), which the paper's "scratch" rows quote.

  python -m ebm_pretrain.main --config=configs/scratch_vit_b.py \
      --config.data.data_dir=DIR --workdir=WORKDIR

AdamW lr 1.6e-3 (1e-4 x 4096/256), betas (0.9, 0.95), wd 0.3, batch 4096, 300
epochs (20 warmup), drop path 0.1, no layer decay, EMA 0.9999 (the
evaluations, best/ and pretrained.load use the average), RandAug, mixup,
cutmix, label smoothing. On fewer accelerators keep the batch with
--config.grad_accum_steps=K.
Expected top-1 (MAE Table 11 / paper Table 3; not reproduced here, it needs
accelerators): 82.3% (paper Table 3, "From scratch", 300 epochs).
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.vit_imagenet_scratch(arg, variant="B/16", epochs=300, drop_path=0.1)
