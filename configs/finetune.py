"""Fine-tune any pretrained backbone on ImageNet-1k with the paper's recipe (Table
A): the model is the one the checkpoint was trained with (ViT, ConvNeXt, Swin or
a registered one), made ready for fine-tuning by its family's ``finetune`` hook
(ViT: global pooling, drop path 0.1, sin-cos position embeddings made trainable;
ConvNeXt: drop path 0.1; Swin: drop path 0.2).

  python -m ebm_pretrain.main --config=configs/finetune.py:init=PRETRAIN_WORKDIR \
      --config.data.data_dir=DIR --workdir=FINETUNE_WORKDIR

From scratch: configs/finetune.py:model=convnext:T,epochs=300 (no init).
100 epochs, batch 1024, AdamW lr 1e-3 x batch/256, layer decay 0.75 (per family:
see ebm_pretrain/models), mixup/cutmix, RandAug, label smoothing; eval/top1 on the
validation split, best/ keeps the best checkpoint.
Expected (paper Table 6, not reproduced here: it needs accelerators): ConvNeXt-T
82.7 and Swin-T 82.2 after 200 pretraining epochs (configs/convnext_t.py,
configs/swin_t.py), against 82.1 / 81.3 for 300 epochs from scratch.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, init="", model="", epochs=100)
  c = recipes.finetune_defaults()
  c.init = a.init
  c.model = recipes.parse_model(a.model)
  c.total_epochs = a.epochs
  return c
