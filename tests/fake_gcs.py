"""A gs:// that needs no network: Google Cloud Storage paths on the local disk,
behind the same layers the program uses for the real thing. fsspec's "gs"/"gcs"
protocol (which etils.epath, and so Orbax's metadata, TFDS and our fs module,
use without TensorFlow) becomes a local filesystem rooted at ``root``, answering
with bucket-relative names as gcsfs does; TensorStore's GCS kvstore (Orbax's
array data) becomes its file driver at the same place.
"""
from __future__ import annotations

import contextlib
import os

import sys

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

# (fsspec.registry, the attribute, is a read-only view of the module's _registry.)
_REGISTRY = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access


def make_filesystem(root: str):
  class FakeGCS(DirFileSystem):
    """gcsfs's names ("bucket/path") over a local directory."""
    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close=None, **kwargs):
      del args, finalize_on_close, kwargs  # gcsfs options
      super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True))  # no folders in GCS

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = path[len(prefix):]
      return path.rstrip("/")

  return FakeGCS


@contextlib.contextmanager
def fake_gcs(root: str):
  """Within the block, gs://BUCKET/PATH is ``root``/BUCKET/PATH."""
  from etils.epath import backend
  from orbax.checkpoint._src.path import gcs_utils

  root = os.path.abspath(root)
  before = dict(_REGISTRY)
  old_kvstore = gcs_utils.get_kvstore_for_gcs
  cls = make_filesystem(root)
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, cls, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access

  def kvstore(path):
    bucket, rest = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, rest)}
  old_hns = gcs_utils.is_hierarchical_namespace_enabled
  gcs_utils.get_kvstore_for_gcs = kvstore
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False  # asks the GCS API
  try:
    yield root
  finally:
    gcs_utils.get_kvstore_for_gcs = old_kvstore
    gcs_utils.is_hierarchical_namespace_enabled = old_hns
    _REGISTRY.clear()
    _REGISTRY.update(before)
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
