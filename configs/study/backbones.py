"""The paper's "the framework works for any backbone" (Table 6) at the CPU
study's scale (issue 29): ConvNeXt-nano and Swin-nano (32px), the mixed
pretraining against the same network from scratch, each fine-tuned on 1% and 10%
of the labels, three seeds. Everything else is the main grid's
(configs/study/fashion_mnist.py: 3 epochs, the holdout kept out of every
training set). Run on the test split directly: no choice is made on these
numbers (the recipes are the main grid's and docs/backbones.md's):

  python -m ebm_pretrain.study run --grid=configs/study/backbones.py --out=OUT
  python -m ebm_pretrain.study report --out=OUT
"""
import ml_collections

from ebm_pretrain import recipes
from ebm_pretrain.study import grid as study_grid


def get_config(arg=None):
  a = recipes.parse_arg(arg, epochs=3)
  families = ("convnext", "swin")
  g = study_grid.derived(
      f"configs/study/fashion_mnist.py:split=test,epochs={a.epochs}",
      {f"{f}_{m}": task for f in families for m, task in (("mixed", "mixed"), ("scratch", ""))},
      seeds=[0, 1, 2])
  g.method_args = ml_collections.ConfigDict(
      {f"{f}_{m}": f"model={f}" for f in families for m in ("mixed", "scratch")})
  g.evals = ml_collections.ConfigDict({k: g.evals[k] for k in ("ft_1pct", "ft_10pct")})
  g.claims = [dict(claim="the framework works for any backbone (Table 6)", method=f"{f}_mixed",
                   than=[f"{f}_scratch"], kind="beats") for f in families]
  return g
