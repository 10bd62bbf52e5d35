"""Fine-tune a pretrained ViT-B/16 on ImageNet-1k: the paper's recipe (Table A), 100 epochs (Table 3).

  python -m ebm_pretrain.main --config=configs/finetune_vit_b.py \
      --config.init=PRETRAIN_WORKDIR --config.data.data_dir=DIR --workdir=FINETUNE_WORKDIR

PRETRAIN_WORKDIR is a run of configs/vit_b.py (or one step folder of its
checkpoints). Without --config.init the same recipe trains from scratch. Batch
1024 (lr 4e-3); on fewer accelerators keep it with --config.grad_accum_steps=K.
Reports eval/top1 on the validation split (224 center crop of the image
resized to 256) every eval_every steps and at the end; best/ keeps the best.
Expected top-1 (paper Table 3; not reproduced here, it needs accelerators):
83.1% after 200 pretraining epochs (task=mixed), 83.5% after 800.

  configs/finetune_vit_b.py:pool=tok   the cls-token head instead of global pooling.
  configs/finetune_vit_b.py:init=DIR,model=from_init   the checkpoint's backbone, any family.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  return recipes.vit_imagenet_downstream(arg, variant="B/16", epochs=100)
