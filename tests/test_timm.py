"""Export to timm / PyTorch and back: the same features on both sides for ViT
(every pooling and position-embedding option), ConvNeXt and Swin, the exact
parameters after a round trip, a fine-tuned and a linear-probe checkpoint
exported with ``python -m ebm_pretrain.export`` classifying like
``pretrained.load``, and imports through ``--config.init=FILE.safetensors``."""
import json
import os

import jax
import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from ebm_pretrain import errors, export, models, pretrained, transfer
from ebm_pretrain.models import vit_timm
from helpers import assert_trees_close, train_inprocess


def _timm_model(output: str):
  cfg = json.load(open(os.path.join(output, "config.json")))
  model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["kwargs"])
  model.load_state_dict(safetensors.torch.load_file(os.path.join(output, "model.safetensors")),
                        strict=True)
  return model.eval(), cfg


def _torch_forward(model, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize("model,size", [
    (dict(name="vit", variant="mu/4", pool="tok", posemb="learn"), 16),
    (dict(name="vit", variant="mu/4", pool="gap", posemb="learn"), 16),
    (dict(name="vit", variant="mu/4", pool="gap", posemb="sincos2d"), 16),
    (dict(name="vit", variant="mu/4", pool="tok", posemb="none"), 16),
    (dict(name="convnext", variant="pico"), 32),
    (dict(name="swin", variant="mu"), 16),      # shifted 4x4 windows, then one whole-map window
    (dict(name="swin", variant="nano"), 32)],   # three stages, two patch mergings
    ids=["vit-tok", "vit-gap", "vit-sincos", "vit-noposemb", "convnext-pico", "swin-mu",
         "swin-nano"])
def test_features_equal_timms_and_round_trip(model, size):
  options = {k: v for k, v in model.items() if k not in ("name", "variant")}
  net = models.get_backbone(model["name"], model["variant"], **options)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 3)))
  apply = jax.jit(net.apply)  # (compiled whole: op by op, every operation is a compile)
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x)["params"]
  leaves, tree = jax.tree.flatten(params)  # move every leaf off its init (zeros, ones)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.device_get(jax.tree.unflatten(
      tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]))
  mapping = models.timm_mapping(model["name"])
  name, kwargs, state = mapping.to_timm(params, model, image_size=size, channels=3)
  theirs = timm.create_model(name, pretrained=False, **kwargs).eval()
  theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
  ours = np.asarray(apply({"params": params}, x))
  np.testing.assert_allclose(_torch_forward(theirs, x), ours, atol=1e-4, rtol=0)
  back = mapping.from_timm(state, model)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  if model.get("posemb", "learn") == "learn":  # import: a timm model with timm's own init
    native = timm.create_model(name, pretrained=False, **kwargs).eval()
    imported = mapping.from_timm({k: v.numpy() for k, v in native.state_dict().items()}, model)
    np.testing.assert_allclose(np.asarray(apply({"params": imported}, x)),
                               _torch_forward(native, x), atol=1e-4, rtol=0)
  expected = {"name": model["name"], "variant": model["variant"]}
  if model["name"] == "vit":  # a timm ViT's own embeddings are learned, whatever ours were
    expected.update(pool=model["pool"], posemb="learn")
  assert mapping.model_of(name, kwargs) == expected


def test_exported_checkpoints_classify_like_pretrained_load(tiny_pretrain, tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)

  def check(workdir, what):
    out = str(tmp_path / f"{what}_timm")
    assert export.main([f"--init={workdir}", f"--output={out}"]) == 0
    theirs, cfg = _timm_model(out)
    ours = pretrained.load(workdir)
    x = np.asarray(ours._normalize(images))  # the normalisation config.json names
    np.testing.assert_allclose(np.asarray(x), (images / 255.0 - np.array(cfg["mean"]))
                               / np.array(cfg["std"]), atol=1e-6)
    want = ours.logits(images) if cfg["kwargs"]["num_classes"] else ours.features(images)
    np.testing.assert_allclose(_torch_forward(theirs, x), np.asarray(want), atol=1e-4, rtol=1e-4)
    return cfg

  assert check(tiny_pretrain, "pretrain")["kwargs"]["num_classes"] == 0  # the backbone only
  ft = str(tmp_path / "ft")
  train_inprocess(f"tiny_finetune:init={tiny_pretrain},steps=2", ft, eval_examples=0)
  assert check(ft, "finetune")["kwargs"]["num_classes"] == 4
  lp = str(tmp_path / "lp")  # BatchNorm statistics move in training: folded into the head
  train_inprocess(f"tiny_finetune:linprobe=True,init={tiny_pretrain},steps=2", lp,
                  eval_examples=0)
  stats = pretrained.load(lp).model_state["batch_stats"]["norm"]
  assert np.abs(np.asarray(stats["mean"])).max() > 0
  check(lp, "linprobe")


def test_export_errors_name_the_problem(tmp_path, capsys):
  assert export.main([f"--init={tmp_path / 'none'}", f"--output={tmp_path / 'o'}"]) == 2
  assert capsys.readouterr().err.startswith("error: ")
  with pytest.raises(ValueError, match="4 after a stride-4 one"):
    models.timm_mapping("convnext").timm_kwargs(dict(name="convnext", variant="nano"), 32, 1)


def test_import_of_an_export_starts_from_the_same_backbone(tiny_pretrain, tmp_path):
  out = str(tmp_path / "export")
  assert export.main([f"--init={tiny_pretrain}", f"--output={out}"]) == 0
  file = os.path.join(out, "model.safetensors")
  from_workdir, _ = train_inprocess(f"tiny_finetune:init={tiny_pretrain},steps=0", str(
      tmp_path / "a"), total_steps=1, **{"optim.base_lr": 0.0})
  from_timm_file, _ = train_inprocess(f"tiny_finetune:init={file},steps=0", str(
      tmp_path / "b"), total_steps=1, **{"optim.base_lr": 0.0})
  assert_trees_close(from_timm_file["params"]["backbone"], from_workdir["params"]["backbone"],
                     rtol=0, atol=1e-7)
  # continued pretraining from the file: the pretraining config names the model itself
  state, _ = train_inprocess("tiny", str(tmp_path / "c"), total_steps=1, init=file,
                             **{"optim.base_lr": 0.0})
  assert_trees_close(state["params"]["model"]["backbone"],
                     pretrained.load(tiny_pretrain).params["model"]["backbone"], rtol=0, atol=1e-7)


def test_import_interpolates_position_embeddings_and_lists_mismatches(tiny_pretrain, tmp_path,
                                                                      capsys):
  out = str(tmp_path / "export")
  assert export.main([f"--init={tiny_pretrain}", f"--output={out}"]) == 0
  file = os.path.join(out, "model.safetensors")
  capsys.readouterr()
  train_inprocess(f"tiny_finetune:init={file},steps=1", str(tmp_path / "big"), eval_examples=0,
                  **{"data.image_size": 32})  # a 4x4 grid of patches becomes 8x8
  assert "Interpolating pos_embedding from 16 to 64 positions" in capsys.readouterr().out
  with pytest.raises(errors.CheckpointError, match="(?s)model.safetensors: .*shape mismatches"
                     ".*encoderblock_0/LayerNorm_0/scale: checkpoint \\(32,\\), model \\(192,\\)"):
    train_inprocess("tiny:steps=1", str(tmp_path / "wide"), init=file,
                    **{"model.variant": "Ti/4"})


def test_import_of_timms_own_vit_with_a_cls_position_slot(tmp_path):
  """timm's default ViT adds a position embedding to the cls token too: imported,
  that slot is folded into our cls token and the features stay the same."""
  theirs = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=16, patch_size=4,
                             embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                             global_pool="token", num_classes=0).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.add_(0.1 * torch.randn_like(p))
  assert theirs.pos_embed.shape[1] == 1 + 16
  file = str(tmp_path / "timm.safetensors")
  safetensors.torch.save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, file)
  model = dict(name="vit", variant="mu/4", pool="tok", posemb="learn")
  net = models.get_backbone("vit", "mu/4", pool="tok", posemb="learn")
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3)))
  params = vit_timm.from_timm(transfer.read_timm(file), model)
  np.testing.assert_allclose(np.asarray(net.apply({"params": params}, x)),
                             _torch_forward(theirs, x), atol=1e-4, rtol=0)
