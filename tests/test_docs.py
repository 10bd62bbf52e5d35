"""The docs cannot rot: every command, config, script and file the README and
docs/ name exists, and every command's --help exits 0."""
import glob
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, cli_env

DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _text() -> str:
  return "\n".join(open(os.path.join(ROOT, d)).read() for d in DOCS)


def _commands() -> list[list[str]]:
  """Each ``python -m ebm_pretrain.X [SUBCOMMAND]`` the docs give, as --help calls."""
  found = set()
  for module, rest in re.findall(r"python3? -m (ebm_pretrain(?:\.\w+)*)([^\n`]*)", _text()):
    sub = re.match(r"\s+([a-z]\w*)\b", rest)  # `study run`, `study report`: a subcommand
    found.add((module, sub.group(1) if sub and module.endswith(".study") else ""))
  return [[sys.executable, "-m", m] + ([s] if s else []) + ["--help"] for m, s in sorted(found)]


def test_the_docs_name_commands():
  """(So that the parametrised check below cannot pass by finding nothing.)"""
  modules = {c[2] for c in _commands()}
  assert {"ebm_pretrain.main", "ebm_pretrain.export", "ebm_pretrain.restore",
          "ebm_pretrain.knn", "ebm_pretrain.study", "ebm_pretrain.benchmark"} <= modules


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: " ".join(c[2:-1]))
def test_every_command_the_docs_name_answers_help(cmd):
  r = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert "usage" in (r.stdout + r.stderr).lower() or "flags" in r.stdout.lower()


def test_every_file_the_docs_name_exists():
  text = _text()
  named = set(re.findall(r"(?<![\w/.])((?:configs|launch|tests|ebm_pretrain|docs|results)"
                         r"/[\w/.-]*\w)", text))
  assert len(named) > 50
  missing = sorted(p for p in named if not os.path.exists(os.path.join(ROOT, p)))
  assert not missing, f"named in README.md or docs/ but not in the repository: {missing}"


def test_the_readme_is_short_and_points_to_every_doc():
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert len(readme.splitlines()) <= 450
  for doc in DOCS[1:]:
    assert f"`{doc}`" in readme, f"the README never points to {doc}"
