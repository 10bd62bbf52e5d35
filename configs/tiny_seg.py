"""Tiny segmentation: UperNet on 16 px GarmentScenes crops, for tests and smoke
runs (seconds). Needs Debian's dataset-fashion-mnist.

  python -m ebm_pretrain.main --config=configs/tiny_seg.py --workdir=/tmp/tiny_seg

Expected: 4 steps, an eval/miou line, checkpoints/ and best/.
  configs/tiny_seg.py:init=/tmp/tiny   the checkpoint's backbone (any family).
  configs/tiny_seg.py:model=convnext   ConvNeXt-mu (or swin) from scratch.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, init="", steps=4, model="vit")
  c = recipes.segmentation_defaults()
  c.init = a.init
  c.model, _ = recipes.small_finetune_model(a.init, a.model, recipes.TINY_MODELS)
  c.num_classes = 11
  c.seg.channels = 16
  recipes.use_fashion_mnist(c.data, image_size=16)
  # Tinted colour scenes: 3 channels, as configs/tiny.py pretrains.
  c.data.update(dict(source="garment_scenes", scene_size=20, num_examples=64, channels=3,
                     mean=[0.45] * 3, std=[0.25] * 3))
  c.dtype = "float32"
  c.batch_size = 8
  c.total_steps = a.steps
  c.optim.update(dict(lr_base_batch=8, warmup_steps=1))
  c.log_every = 2
  c.checkpoint_every = 2
  c.eval_every = 2
  c.image_every = 2  # image | prediction | truth overlays in images/
  c.eval_examples = 16
  c.eval_batch_size = 8
  return c
