"""The CPU study grid (issue 15): ViT-nano/7 on Fashion-MNIST, every pretext task
and baseline pretrained for the same number of epochs, each checkpoint judged by
fine-tuning on 1% and 10% of the labels, a linear probe and kNN.

  python -m ebm_pretrain.study run --grid=configs/study/fashion_mnist.py --out=results/fashion_mnist
  python -m ebm_pretrain.study report --out=results/fashion_mnist

5000 training images are held out (data.holdout) and every number is measured
on them: the choices are made there. The final numbers: the same grid with
``:split=test``, into another --out. 3 pretraining epochs (~20 minutes per energy
pretraining on 2 cores, at the demo's speed); ``:epochs=N`` changes it.
Not yet run: no results committed.
"""
import ml_collections

from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, epochs=3, split="holdout")
  g = ml_collections.ConfigDict()
  g.pretrain_config = "configs/demo.py"
  g.pretrain_arg = "steps=0"
  g.finetune_config = "configs/demo_finetune.py"
  g.scratch_task = "mixed"
  g.methods = ml_collections.ConfigDict(dict(
      scratch="", mask_grid="mask_grid7", mask_random="mask_random_large", sr="sr4",
      denoise="denoise", mixed="mixed", mixed_n1="mixed", mixed_n3="mixed", sorting="sorting",
      contrastive="contrastive_mixed", ae_sr="ae_sr4", ae_denoise="ae_denoise",
      ae_sorting="ae_sorting", mae="mae"))
  g.method_overrides = ml_collections.ConfigDict(dict(
      mixed_n1=dict(inner_steps=1), mixed_n3=dict(inner_steps=3)))
  three = [0, 1, 2]
  g.seeds = ml_collections.ConfigDict(dict(default=[0], scratch=three, mixed=three,
                                           sorting=three, mae=three))
  g.overrides = ml_collections.ConfigDict(dict(data=dict(holdout=5000, eval_split=a.split)))
  g.pretrain_overrides = ml_collections.ConfigDict(dict(
      total_steps=0, total_epochs=a.epochs, checkpoint_every=500, eval_examples=1000))
  g.evals = ml_collections.ConfigDict(dict(
      ft_1pct=dict(kind="finetune", arg="fraction=0.01"),
      ft_10pct=dict(kind="finetune", arg="fraction=0.1"),
      probe=dict(kind="linear_probe", train_examples=10000),
      knn=dict(kind="knn", k=20, train_examples=10000)))
  return g
