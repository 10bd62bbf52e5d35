"""The study harness: a grid of pretraining methods x seeds x evaluations, run
cell by cell (resumable), and a report made from the cells' JSON alone.

  python -m ebm_pretrain.study run --grid=configs/study/fashion_mnist.py --out=results/fashion_mnist
  python -m ebm_pretrain.study report --out=results/fashion_mnist [--readme=docs/study.md]
  python -m ebm_pretrain.study cost --grid=configs/study/fashion_mnist.py --out=results/fashion_mnist

``grid.py``: what a grid config holds and its cells; ``runner.py``: running them
(``--only=PATTERN``, fnmatch on the cell id, runs a subset; a finished cell is
skipped, an interrupted one resumes); ``report.py``: the tables and the claims;
``plots.py``: the figures; ``cost.py``: every pretraining's step timed in one
process, the report's pretraining times.
"""
from __future__ import annotations

import os
import sys

from ebm_pretrain.study.grid import Cell, cells, load_config_file, with_overrides
from ebm_pretrain.study.report import report, summary
from ebm_pretrain.study.runner import Runner, run

__all__ = ["Cell", "Runner", "cells", "load_config_file", "main", "report", "run", "summary",
           "with_overrides"]


def main(argv: list[str]) -> None:
  import argparse
  p = argparse.ArgumentParser(prog="python -m ebm_pretrain.study")
  sub = p.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run")
  r.add_argument("--grid", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--only", default="*")
  r.add_argument("--pretrained_from", default="",
                 help="another OUT whose finished pretrainings to evaluate (same configs)")
  c = sub.add_parser("cost")
  c.add_argument("--grid", required=True)
  c.add_argument("--out", required=True)
  c.add_argument("--rounds", type=int, default=10, help="interleaved rounds timed (median)")
  rep = sub.add_parser("report")
  rep.add_argument("--out", required=True)
  rep.add_argument("--readme", default=None, help="also update this file's claims block")
  a = p.parse_args(argv)
  from ebm_pretrain import disk_full
  from ebm_pretrain.data.sources import DataSourceError
  from ebm_pretrain.errors import CheckpointError, ConfigError, NoSpaceError
  try:
    if a.command == "run":
      run(a.grid, a.out, a.only, pretrained_from=a.pretrained_from)
    elif a.command == "cost":
      from ebm_pretrain.study import cost
      cost.measure(load_config_file(a.grid), a.out, a.rounds, grid_spec=a.grid)
      if not os.path.isdir(os.path.join(a.out, "cells")):  # (timed before any cell ran)
        print(f"wrote {os.path.join(a.out, 'cost.json')}; no cells to report yet")
        return
    print(report(a.out, getattr(a, "readme", None)))
  except (ConfigError, CheckpointError, DataSourceError, FileNotFoundError, NoSpaceError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # a cell, the grid or a report file found no space
    if not disk_full.is_no_space(e):
      raise
    print(f"error: no space left on {e.filename or a.out}; the cells written so far are intact: "
          "free space, then rerun the same command", file=sys.stderr)
    sys.exit(2)
