"""The import graph goes one way: the method, the models and the data know
nothing of the trainer, objectives, evaluators or recipes."""
import ast
import os

import pytest

from helpers import ROOT

LOW = ["energy.py", "corruptions.py", "sorting.py", "models", "data", "trees.py", "errors.py",
       "fs.py", "tasks.py"]
HIGH = {"train", "main", "objectives", "evaluators", "recipes", "config_lib", "validate", "schema",
        "checkpoints", "train_checkpoints", "transfer", "pretrained", "benchmark", "knn", "optim"}


def _imports(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      yield node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        yield a.name, []


def _ebm_modules(module, names):
  parts = module.split(".")
  if parts[0] != "ebm_pretrain":
    return set()
  if len(parts) > 1:
    return {parts[1]}
  return set(names)  # from ebm_pretrain import x, y


def test_low_level_modules_import_nothing_above_them():
  pkg = os.path.join(ROOT, "ebm_pretrain")
  files = []
  for entry in LOW:
    p = os.path.join(pkg, entry)
    files += [os.path.join(p, f) for f in os.listdir(p) if f.endswith(".py")] \
        if os.path.isdir(p) else [p]
  assert len(files) > 12
  bad = {}
  for f in files:
    used = set().union(*[_ebm_modules(m, n) for m, n in _imports(f)] or [set()])
    if used & HIGH:
      bad[os.path.relpath(f, ROOT)] = sorted(used & HIGH)
  assert not bad, bad


def _module_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere (function-level imports
  included: a cycle hidden in a function is still a cycle)."""
  pkg = os.path.join(ROOT, "ebm_pretrain")
  files = {}
  for root, _, names in os.walk(pkg):
    for f in names:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].replace(os.sep, ".")
        files[rel.removesuffix(".__init__")] = os.path.join(root, f)
  graph = {}
  for name, path in files.items():
    here = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom):
        base = (".".join(here.split(".")[:len(here.split(".")) - node.level + 1]
                         + ([node.module] if node.module else []))
                if node.level else node.module or "")
        for a in node.names:  # a submodule if there is one, else the module itself
          out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
      elif isinstance(node, ast.Import):
        out |= {a.name for a in node.names}
    graph[name] = {m for m in out if m in files and m != name}
  return graph


def test_no_import_cycles():
  graph = _module_graph()
  assert len(graph) > 60

  def reaches(a, b, seen):
    return b in graph[a] or any(reaches(c, b, seen | {a}) for c in graph[a] - seen)
  cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, set())})
  assert not cycles, cycles


def test_the_trainer_asks_objectives_nothing_by_introspection():
  src = open(os.path.join(ROOT, "ebm_pretrain", "train.py")).read()
  assert "hasattr(" not in src and "getattr(" not in src and "config.get(" not in src


def test_configs_written_against_config_lib_still_work():
  from ebm_pretrain import config_lib, recipes, validate
  assert config_lib.pretrain_defaults().to_dict() == recipes.pretrain_defaults().to_dict()
  assert config_lib.validate is validate.validate and config_lib.set_task is recipes.set_task


def test_only_the_benchmark_reference_imports_torch():
  """torch is an optional extra: the package works without it, and the
  benchmark's reference runs it in a worker process of its own."""
  importers = set()
  for dirpath, _, files in os.walk(os.path.join(ROOT, "ebm_pretrain")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        if any(m.split(".")[0] in ("torch", "timm", "torchvision") for m, _ in _imports(path)):
          importers.add(os.path.relpath(path, ROOT))
  assert importers == {os.path.join("ebm_pretrain", "torch_reference.py")}


def test_one_registry_style_for_everything_a_config_names():
  """Objectives, evaluators, corruptions, backbones and data sources are each a
  ``registry.Registry``: one way to add one, one message for an unknown name."""
  from ebm_pretrain import corruptions, evaluators, models, objectives, registry
  from ebm_pretrain.data import sources
  from ebm_pretrain.errors import ConfigError
  tables = {"objective": objectives._REGISTRY, "evals": evaluators._REGISTRY,
            "task": corruptions.CORRUPTIONS, "model.name": models._BACKBONES,
            "data.source": sources.SOURCES}
  for field, table in tables.items():
    assert isinstance(table, registry.Registry), field
    with pytest.raises(ConfigError, match=r"unknown .*'no_such_thing'; valid: "):
      table.get("no_such_thing")
