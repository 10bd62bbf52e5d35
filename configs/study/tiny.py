"""A two-method, two-seed grid on synthetic 16px data, for tests and smoke runs:

  python -m ebm_pretrain.study run --grid=configs/study/tiny.py --out=/tmp/study_tiny

Expected: 2 pretrainings, 4 fine-tunings, 5 kNN cells (one of the pixels), one
fine-tuning at another learning rate; a table with scratch and mixed, two seeds each, and the claims
row (the numbers mean nothing at this size). ``:seg=True``: the downstream task is
segmentation (configs/tiny_seg.py, judged by mIoU) instead.
"""
import ml_collections

from ebm_pretrain import recipes
from ebm_pretrain.study import grid as study_grid


def get_config(arg=None):
  a = recipes.parse_arg(arg, steps=4, split="holdout", seg=False, idx_dir="")
  g = ml_collections.ConfigDict()
  g.pretrain_config = "configs/tiny.py"
  g.pretrain_arg = f"steps={a.steps}"
  g.finetune_config = "configs/tiny_finetune.py"
  g.scratch_task = "mixed"  # the scratch method's random-init features come from this config
  g.methods = ml_collections.ConfigDict(dict(scratch="", mixed="mixed", pixels=study_grid.PIXELS))
  g.seeds = ml_collections.ConfigDict(dict(default=[0, 1], pixels=[0]))
  g.overrides = ml_collections.ConfigDict(dict(data=dict(num_examples=48, holdout=16,
                                                         eval_split=a.split)))
  g.pretrain_overrides = ml_collections.ConfigDict(dict(checkpoint_every=2, eval_examples=16))
  g.method_overrides = ml_collections.ConfigDict()
  g.evals = ml_collections.ConfigDict(dict(
      ft=dict(kind="finetune", arg="steps=2", overrides=dict(eval_examples=-1)),
      knn=dict(kind="knn", k=5, train_examples=0),
      # a learning-rate search: one method, one seed
      ft_lr=dict(kind="finetune", arg="steps=2", methods=["mixed"], seeds=[0],
                 overrides=dict(optim=dict(base_lr=3e-3)))))
  g.claims = [dict(claim="pretraining beats scratch", method="mixed", than=["scratch"],
                   kind="beats")]
  g.n_sweep = ml_collections.ConfigDict(dict(mixed=2))
  if a.seg:  # segmentation downstream (configs/study/segmentation.py's shape)
    g.finetune_config = "configs/tiny_seg.py"
    g.methods = ml_collections.ConfigDict(dict(scratch="", mixed="mixed"))
    g.evals = ml_collections.ConfigDict(dict(seg=dict(kind="finetune", arg="steps=2")))
  if a.idx_dir:  # Fashion-MNIST's IDX files from another folder (tests write their own)
    g.overrides.data.idx_dir = a.idx_dir
  return g
