"""What the absl commands (``main``, ``knn``, ``benchmark``) share: ``app.run``
with ``--help`` exiting 0. absl exits 1 after printing the help, which a shell
script, a CI step or the docs check (``tests/test_docs.py``) reads as a failure."""
from __future__ import annotations

import sys

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def run(main, **kwargs) -> None:
  from absl import app
  try:
    app.run(main, **kwargs)
  except SystemExit as e:
    # (absl exits 1 during flag parsing, before main runs, when it printed a help)
    if e.code == 1 and any(a.split("=", 1)[0] in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
