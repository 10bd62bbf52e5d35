"""A write that fails for lack of space: recognised wherever it surfaces, and
the noise of the writes it abandons kept off the console.

Orbax writes checkpoints in background threads through TensorStore, so a full
disk surfaces later, at the next save or wait, as a ``ValueError:
RESOURCE_EXHAUSTED ... [os_error_code='28']``; metrics, TensorBoard and image
files raise ``OSError(ENOSPC)`` at once. Either way the run stops with
:class:`~ebm_pretrain.errors.NoSpaceError` (exit 2, one line naming the step
and the intact checkpoints). Meanwhile the abandoned writes print tracebacks
from threads that are not ours (Orbax's error logs, TensorStore callbacks on
a closed event loop, coroutines collected at exit): :func:`install_filters`
drops exactly those.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import threading

from ebm_pretrain.errors import NoSpaceError

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How TensorStore (through Orbax) words an ENOSPC.
_MARKERS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'",
            "os_error_code='122'")


def is_no_space(e: BaseException | None) -> bool:
  """Whether ``e`` (or an exception it was raised from) is a write that failed
  for lack of space."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
      return True
    if any(m in str(e) for m in _MARKERS):
      return True
    e = e.__cause__ or e.__context__
  return False


def _abandoned_write_noise(e: BaseException | None) -> bool:
  """A failed write's own error, or an abandoned asynchronous write finding its
  event loop closed."""
  return is_no_space(e) or (isinstance(e, RuntimeError) and str(e) == "Event loop is closed")


class _DropNoSpaceRecords(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and _abandoned_write_noise(record.exc_info[1]):
      return False
    message = record.getMessage()
    return not any(m in message for m in _MARKERS)


_installed = False


def install_filters() -> None:
  """Drops, for the rest of the process, what abandoned writes print after a
  write failed for lack of space (the run says it in one line instead).
  Everything else passes through unchanged. Idempotent."""
  global _installed
  if _installed:
    return
  _installed = True
  # absl: Orbax's own error logs. asyncio: "Task exception was never retrieved"
  # for an abandoned write's task, logged when the loop is collected at exit.
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_DropNoSpaceRecords())

  previous_hook = sys.excepthook

  def excepthook(kind, value, tb):
    if not _abandoned_write_noise(value):
      previous_hook(kind, value, tb)
  sys.excepthook = excepthook

  previous_thread_hook = threading.excepthook

  def thread_hook(args):
    if not _abandoned_write_noise(args.exc_value):
      previous_thread_hook(args)
  threading.excepthook = thread_hook

  previous_unraisable = sys.unraisablehook

  def unraisable_hook(u):
    code = getattr(u.object, "cr_code", None) or getattr(u.object, "__code__", None)
    if code is not None and "orbax" in code.co_filename and (
        sys.is_finalizing() or isinstance(u.exc_value, ImportError)):
      return  # an abandoned write's coroutine, collected at exit
    if _abandoned_write_noise(u.exc_value):
      return
    previous_unraisable(u)
  sys.unraisablehook = unraisable_hook


def error(e: OSError | Exception, default_where: str, step, intact: list[int],
          checkpoints_dir: str) -> NoSpaceError:
  """The NoSpaceError for a write that raised ``e``: where (the file it names,
  else ``default_where``), the step, the intact checkpoints."""
  where = getattr(e, "filename", None) or default_where
  return NoSpaceError(message(os.fspath(where), step, intact, checkpoints_dir))


def message(where: str, step: int, intact: list[int], checkpoints_dir: str) -> str:
  """The one line a run ends with when a write found no space."""
  if intact:
    after = (f"steps {intact} in {checkpoints_dir} are intact; free space, then rerun the same "
             f"command: it resumes from step {intact[-1]}")
  else:
    after = "no checkpoint was saved before it; free space, then rerun the same command"
  return f"no space left on {where} while writing step {step}; {after}"
