"""Demo of the segmentation path on this machine: UperNet on GarmentScenes
(Fashion-MNIST garments composited onto textured backgrounds, 11 classes with
the background; data/segmentation.py), from the demo pretraining or from scratch.

  python -m ebm_pretrain.main --config=configs/demo.py --workdir=workdirs/demo
  python -m ebm_pretrain.main --config=configs/demo_seg.py:init=workdirs/demo \
      --workdir=workdirs/demo_seg
  python -m ebm_pretrain.main --config=configs/demo_seg.py --workdir=workdirs/demo_seg_scratch

Needs Debian's dataset-fashion-mnist. ViT-nano/7 at 42 px (the 28 px
pretraining's position embeddings interpolated), 48 px scenes rescaled and
cropped as ADE20K's are, UperNet 32 wide; eval/miou on 1000 test scenes.
"""
from ebm_pretrain import recipes


def get_config(arg=None):
  a = recipes.parse_arg(arg, init="", steps=1000, model="vit")
  c = recipes.segmentation_defaults()
  c.init = a.init
  c.model, _ = recipes.small_finetune_model(a.init, a.model, recipes.DEMO_MODELS)
  c.num_classes = 11
  c.seg.channels = 32
  recipes.use_fashion_mnist(c.data, image_size=42)
  c.data.update(dict(source="garment_scenes", scene_size=48, num_examples=0))
  c.dtype = "float32"
  c.batch_size = 32
  c.total_steps = a.steps
  c.optim.update(dict(base_lr=1e-3, lr_base_batch=256, warmup_steps=100))
  c.layer_decay = 0.75
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval_every = 500
  c.image_every = 500  # image | prediction | truth overlays in images/
  c.eval_examples = 1000
  c.eval_batch_size = 50
  return c
