"""The paper's "it transfers to segmentation" (Table 7) at the CPU study's scale
(issue 29): UperNet on GarmentScenes (configs/demo_seg.py: ViT-nano/7 at 42px,
1000 steps) from the main grid's mixed pretraining (3 epochs, the holdout kept
out) against from scratch, three seeds, mIoU on the test scenes. Run on the test
split directly: no choice is made on these numbers (the recipe is the demo's):

  python -m ebm_pretrain.study run --grid=configs/study/segmentation.py --out=OUT
  python -m ebm_pretrain.study report --out=OUT
"""
import ml_collections

from ebm_pretrain import recipes
from ebm_pretrain.study import grid as study_grid


def get_config(arg=None):
  a = recipes.parse_arg(arg, epochs=3, steps=1000)
  g = study_grid.derived(f"configs/study/fashion_mnist.py:split=test,epochs={a.epochs}",
                         dict(mixed="mixed", scratch=""), seeds=[0, 1, 2])
  g.finetune_config = "configs/demo_seg.py"
  # The holdout is kept out of the pretraining; the scenes are made from the
  # training garments (GarmentScenes has no holdout of its own).
  g.pretrain_overrides.data = dict(holdout=g.overrides.data.holdout)
  g.overrides = ml_collections.ConfigDict(dict(data=dict(eval_split="test")))
  g.evals = ml_collections.ConfigDict(dict(seg_miou=dict(kind="finetune", arg=f"steps={a.steps}")))
  g.claims = [dict(claim="it transfers to segmentation (Table 7)", method="mixed",
                   than=["scratch"], kind="beats")]
  return g
