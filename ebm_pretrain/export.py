"""Export a checkpoint for timm / PyTorch:

  python -m ebm_pretrain.export --init=WORKDIR [--output=DIR]

writes ``DIR/model.safetensors`` (the backbone in timm's parameter names and
layouts, and for a fine-tuned or linear-probe checkpoint its classifier as
``head``; a linear probe's BatchNorm is folded into it) and ``DIR/config.json``
(``architecture`` and ``kwargs`` for ``timm.create_model``, the input size and
the normalisation the model expects). In PyTorch (README, "Export to timm"):

  cfg = json.load(open("DIR/config.json"))
  model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["kwargs"])
  model.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"), strict=True)

Families with a timm mapping: ``models.timm_mapping``. Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

EXIT_BAD_INPUT = 2


def export(init: str, output: str, plugins=()) -> dict:
  """Writes ``output``/model.safetensors and config.json; returns the config. The
  head goes with the backbone where the objective offers one timm has
  (``export_head``); config["head"] says which."""
  from safetensors.numpy import save_file
  from ebm_pretrain import models, pretrained
  model = pretrained.load(init, plugins=plugins)
  c = model.config
  mapping = models.timm_mapping(c.model.name)
  params = jax.device_get(model.params)
  backbone = model.objective.backbone_params(params)
  name, kwargs, state = mapping.to_timm(backbone, c.model.to_dict(), c.data.image_size,
                                        c.data.channels)
  head = model.objective.export_head(params, jax.device_get(model.model_state))
  if head is not None:
    state.update(head["state"])
    kwargs = dict(kwargs, **head["kwargs"])
  config = dict(architecture=name, kwargs=kwargs, head=head is not None,
                input_size=[c.data.channels, c.data.image_size, c.data.image_size],
                mean=list(c.data.mean), std=list(c.data.std), objective=c.objective,
                source=os.path.abspath(init), step=int(model.step))
  os.makedirs(output, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            os.path.join(output, "model.safetensors"))
  with open(os.path.join(output, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  return config


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m ebm_pretrain.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", required=True, help="a workdir, checkpoints/N or best/")
  p.add_argument("--output", default="", help="default: INIT/timm")
  p.add_argument("--plugin", action="append", default=[],
                 help="a module to import first: the one that registered the checkpoint's "
                 "objective, if it is not the package's")
  a = p.parse_args(argv)
  from ebm_pretrain.errors import CheckpointError
  output = a.output or os.path.join(a.init, "timm")
  try:
    config = export(a.init, output, plugins=a.plugin)
  except (CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  head = (f"with its head ({config['kwargs'].get('num_classes', 0)} classes)" if config["head"]
          else f"the backbone alone: the {config['objective']!r} objective offers no head timm "
          "has (no export_head)")
  print(f"Wrote {output}/model.safetensors and config.json: timm {config['architecture']}, "
        f"{head}, from step {config['step']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
