"""``python -m ebm_pretrain.study run|report``: see ``ebm_pretrain/study/__init__.py``."""
import sys

from ebm_pretrain.study import main

if __name__ == "__main__":
  main(sys.argv[1:])
