"""The one kind of name -> entry table a config picks from: objectives and
evaluators (classes), corruptions (factories), backbones (their hooks) and data
sources (readers). The package's objectives and evaluators are "module:Class"
strings, imported on first use; a plug-in registers its own entry."""
from __future__ import annotations

import importlib

from ebm_pretrain.errors import fail


class Registry:

  def __init__(self, field: str, entries: dict[str, object], kind: str = ""):
    self.field = field  # the config field that names an entry, for messages
    self.kind = kind    # what an entry is called in messages ("task", "model")
    self._entries = dict(entries)
    self._plugins: dict[str, str] = {}  # name -> the module outside the package that registered it

  def copy(self) -> "Registry":
    out = Registry(self.field, self._entries, self.kind)
    out._plugins = dict(self._plugins)
    return out

  def register(self, name: str, cls, module: str = "") -> None:
    """``module``: who registered it, when ``cls`` does not say (a record of hooks)."""
    self._entries[name] = cls
    module = module or getattr(cls, "__module__", "")
    if module and not module.startswith("ebm_pretrain."):
      self._plugins[name] = module

  def plugin_module(self, name: str) -> str | None:
    """The module that registered ``name``, if it is not the package's own."""
    return self._plugins.get(name)

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def get(self, name: str, field: str | None = None):
    """The class registered as ``name``; ConfigError naming ``field`` if none is."""
    if name not in self._entries:
      what = f"{self.kind} {name!r}" if self.kind else repr(name)
      fail(field or self.field, f"unknown {what}; valid: {', '.join(self.names())}")
    entry = self._entries[name]
    if isinstance(entry, str):
      module, cls = entry.split(":")
      entry = self._entries[name] = getattr(importlib.import_module(module), cls)
    return entry
