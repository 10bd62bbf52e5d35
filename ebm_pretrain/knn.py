"""kNN top-1 of a checkpoint's frozen features, from the command line (the ``knn``
evaluator, ``ebm_pretrain/evaluators/knn.py``, outside the trainer):

  python -m ebm_pretrain.knn --init=workdirs/demo [--train_examples=N] [--eval_examples=N]

reads the data named in the checkpoint's config (train split and eval split)
and prints top-1.
"""
from __future__ import annotations

import sys

import jax


def evaluate(model, *, train_examples: int = 0, eval_examples: int = 0, k: int = 20,
             temperature: float = 0.07, batch_size: int = 256) -> float:
  """kNN top-1 of ``model`` (``pretrained.load``) on its data's eval split."""
  from ebm_pretrain import evaluators
  n = jax.device_count()
  spec = dict(type="knn", every=0, examples=eval_examples or -1, train_examples=train_examples,
              k=k, temperature=temperature, batch_size=max(n, batch_size // n * n),
              split=model.config.data.eval_split, prefix="knn")
  ev = evaluators.get_class("knn")("knn", spec, model.config, model.objective,
                                   evaluators.Context.local())
  return ev.run(model.params, model.model_state)["knn_top1"]


def main(argv):
  from absl import flags
  from ebm_pretrain import pretrained
  from ebm_pretrain.data.sources import DataSourceError
  from ebm_pretrain.errors import CheckpointError
  f = flags.FLAGS
  try:
    model = pretrained.load(f.init, plugins=f.plugin)
    top1 = evaluate(model, train_examples=f.train_examples, eval_examples=f.eval_examples,
                    k=f.k, temperature=f.temperature)
  except (CheckpointError, DataSourceError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"kNN (k={f.k}, T={f.temperature}) top-1 of {f.init} step {model.step}: {top1:.4f}")


if __name__ == "__main__":
  from absl import flags

  from ebm_pretrain import cli
  flags.DEFINE_string("init", None, "A workdir, checkpoints folder or step folder.")
  flags.DEFINE_integer("train_examples", 0, "Use the first N training images (0: all).")
  flags.DEFINE_integer("eval_examples", 0, "Use the first N eval images (0: all).")
  flags.DEFINE_integer("k", 20, "Neighbours.")
  flags.DEFINE_float("temperature", 0.07, "Vote weight temperature.")
  flags.DEFINE_multi_string("plugin", [], "A module to import first: the one that registered "
                            "the checkpoint's objective, if it is not the package's.")
  flags.mark_flag_as_required("init")
  cli.run(main)
