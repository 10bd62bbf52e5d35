"""Restore your own images with a pretrained energy model and draw the grid:

  python -m ebm_pretrain.restore --init=workdirs/demo --images=FOLDER --output=grid.png \
      [--task=sr4] [--steps=N] [--seed=0] [--limit=16] [--resize=short_side|none]

Every file of FOLDER (sorted by name, the first ``--limit``) is read as an image
(as a photo viewer shows it: ``data/image.py``), converted to the model's
channels and, by default, brought to the model's size as the evaluation
pipeline does (the short side resized to it, then the central square: the
grid's header says so); ``--resize=none`` keeps each image's own size. Then it
is corrupted by ``--task`` (default: the task it was trained on), restored by
N energy-descent steps (default: its N) and drawn as one row: corrupted |
step 1 ... step N | original, each scaled up to be legible
(``ebm_pretrain.pictures``). A file that is not an image, or (``--resize=none``)
whose size the model cannot take or that differs from the first image's (one
grid, one size), gets one line on stderr naming it; the rest are drawn, and
the exit status is then 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

EXIT_BAD_INPUT = 2


def read_images(folder: str, channels: int, limit: int, size: int | None = None):
  """([(name, uint8 [H, W, C])], [(name, why)]): the readable images of ``folder``
  (each brought to ``size`` x ``size`` as the evaluation pipeline does, if given)
  and the files that are not images."""
  from ebm_pretrain.data import image as image_lib, pipeline
  good, bad = [], []
  names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
  for name in names[:limit]:
    try:
      with open(os.path.join(folder, name), "rb") as f:
        array = image_lib.decode_image(f.read(), channels)
    except (image_lib.UndecodableImage, OSError) as e:
      bad.append((name, str(e) if isinstance(e, image_lib.UndecodableImage)
                  else f"cannot read it ({e.strerror})"))
      continue
    good.append((name, pipeline.center_crop(array, size, size) if size else array))
  return good, bad


def accepted(model, shape: tuple[int, int]) -> str | None:
  """Why ``model`` cannot take images of ``shape`` (H, W), or None: a shape trace
  of its energy, nothing computed."""
  import jax
  import jax.numpy as jnp
  c, size = model.config.data.channels, model.config.data.image_size
  try:
    jax.eval_shape(model.energy, jnp.zeros((1, *shape, c), jnp.uint8))
  except Exception:  # pylint: disable=broad-except  (any shape error of any backbone)
    m = model.config.model
    return (f"{shape[0]}x{shape[1]} images do not fit the model ({m.name} {m.variant}, "
            f"trained on {size}x{size} images): leave out --resize=none to bring every image "
            f"to {size}x{size}")
  return None


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m ebm_pretrain.restore", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", required=True, help="a pretraining workdir or checkpoint folder")
  p.add_argument("--images", required=True, help="a folder of image files")
  p.add_argument("--output", required=True, help="the PNG to write")
  p.add_argument("--task", default="", help="a corruption spec (default: the training task)")
  p.add_argument("--steps", type=int, default=0, help="restoration steps (default: the training N)")
  p.add_argument("--seed", type=int, default=0, help="the corruption's random seed")
  p.add_argument("--limit", type=int, default=16, help="at most this many images")
  p.add_argument("--plugin", action="append", default=[],
                 help="a module to import first: the one that registered the checkpoint's "
                 "objective, if it is not the package's")
  p.add_argument("--resize", choices=("short_side", "none"), default="short_side",
                 help="short_side (default): the short side to the model's size, then the "
                 "central square, as evaluation does; none: each image at its own size")
  a = p.parse_args(argv)

  from ebm_pretrain import pictures, pretrained
  from ebm_pretrain.errors import CheckpointError, ConfigError
  from PIL import Image

  def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT

  if not os.path.isdir(a.images):
    return fail(f"--images={a.images}: not a folder")
  try:
    model = pretrained.load(a.init, plugins=a.plugin)
  except CheckpointError as e:
    return fail(str(e))
  if "restore" not in model.capabilities():
    return fail(f"{a.init} holds a {model.config.objective!r} model; restore needs one that "
                f"offers 'restore' (a pixel-restoration energy checkpoint, objective=energy); "
                f"it offers {', '.join(model.capabilities())}")
  size = model.config.data.image_size
  good, bad = read_images(a.images, model.config.data.channels, a.limit,
                          size if a.resize == "short_side" else None)
  drawn = []
  for name, image in good:
    why = accepted(model, image.shape[:2])
    if why is None and drawn and image.shape != drawn[0][1].shape:
      why = (f"{image.shape[0]}x{image.shape[1]}, but {drawn[0][0]} is "
             f"{drawn[0][1].shape[0]}x{drawn[0][1].shape[1]}: one grid takes one size")
    if why:
      bad.append((name, why))
    else:
      drawn.append((name, image))
  for name, why in bad:
    print(f"error: {os.path.join(a.images, name)}: {why}", file=sys.stderr)
  if not drawn:
    return fail(f"no image in {a.images} to draw")
  try:
    columns = model.restoration_columns(np.stack([im for _, im in drawn]), task=a.task,
                                        num_steps=a.steps or None, seed=a.seed)
  except (ConfigError, ValueError) as e:
    return fail(str(e))
  d = model.config.data
  captions = {"original": f"resized to {size}"} if a.resize == "short_side" else None
  picture = pictures.grid({k: np.asarray(v) for k, v in columns.items()}, d.mean, d.std,
                          captions=captions)
  os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
  Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(a.output)
  print(f"Wrote {a.output}: {len(drawn)} images ({', '.join(n for n, _ in drawn)}), "
        f"{picture.shape[1]}x{picture.shape[0]} px")
  return EXIT_BAD_INPUT if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
