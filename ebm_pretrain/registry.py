"""Name -> class tables that a config picks from (objectives, evaluators); the
package's entries are "module:Class" strings, imported on first use."""
from __future__ import annotations

import importlib

from ebm_pretrain.errors import fail


class Registry:

  def __init__(self, field: str, entries: dict[str, object]):
    self.field = field  # the config field that names an entry, for messages
    self._entries = dict(entries)
    self._plugins: dict[str, str] = {}  # name -> the module outside the package that registered it

  def register(self, name: str, cls) -> None:
    self._entries[name] = cls
    module = getattr(cls, "__module__", "")
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
      fail(field or self.field, f"unknown {name!r}; valid: {', '.join(self.names())}")
    entry = self._entries[name]
    if isinstance(entry, str):
      module, cls = entry.split(":")
      entry = self._entries[name] = getattr(importlib.import_module(module), cls)
    return entry
