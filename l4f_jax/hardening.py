"""Process-level workarounds for failures that no library API reports cleanly; each one exists for
one observed failure, named here with the test that shows it. Base utility: no l4f_jax imports, so
any layer (errors.py included) may use it.

- `open_file_in(exc)`: a failed `f.write` (a full disk, `ulimit -f`) raises an OSError that does
  not name its file; the frames' open file objects do. Without it the one-line error says only
  "the file is too large". Test: tests/test_hostile.py::evaluate_disk_full_writing_metrics.
- `held_stderr(drop)`: Orbax logs a failed save or restore, and TensorStore's threads print a
  traceback per pending array to file descriptor 2 (not through Python), mostly before the
  exception reaches the caller. The block's fd-2 output is held and dropped when the failure is
  reported as one line, written out otherwise. Tests: tests/test_hostile.py::convert_disk_full,
  train_generator_truncated, sample_generator_without_checksums_truncated (no "Traceback").
- `filter_unraisable(predicate)`: exceptions Python cannot raise (finalizers, callbacks) print
  "Exception ignored ... Traceback". Two kinds are expected and dropped: TensorStore callbacks and
  Orbax coroutines abandoned by a failed save (`is_storage_noise`; same tests as above), and a
  KeyboardInterrupt raised inside a garbage-collector callback, which `system.interrupts` turns
  into an immediate stop (tests/test_interrupts.py::test_edit_interrupted_leaves_nothing).
- `drop_logged(predicate)`: Orbax's background save threads log the exception of a failed
  asynchronous save with its traceback (`logging.exception`, absl's logger) as soon as it happens,
  long before the exception reaches the program, which reports it as one line. Those records are
  dropped. Test: tests/test_hostile.py::train_checkpoint_disk_full.
- `errors.fail` ends the process with `os._exit` for the same late-traceback reason (its
  docstring).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import traceback
from typing import Callable, Optional


def open_file_in(exc: BaseException) -> Optional[str]:
  """The name of the innermost open file object among the locals of the frames `exc` went
  through."""
  name = None
  for frame, _ in traceback.walk_tb(exc.__traceback__):
    for value in frame.f_locals.values():
      file_name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
      if isinstance(file_name, str) and not file_name.startswith("<"):  # not <stderr>
        name = file_name
  return name


def is_storage_noise(unraisable) -> bool:
  """True for the unraisable exceptions of reads and writes abandoned after a failure: TensorStore
  callbacks that find Orbax's event loop closed, and Orbax coroutines never awaited."""
  exc, obj = unraisable.exc_value, unraisable.object
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


_FILTERS: list = []


def filter_unraisable(predicate: Callable) -> None:
  """Drops the unraisable exceptions for which `predicate(unraisable)` is true (it may act on
  them first); the others reach the previous `sys.unraisablehook`. Installed once per
  predicate."""
  if predicate in _FILTERS:
    return
  _FILTERS.append(predicate)
  if getattr(sys.unraisablehook, "_l4f_filter", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not any(p(unraisable) for p in list(_FILTERS)):
      previous(unraisable)
  hook._l4f_filter = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


class _DropLogged(logging.Filter):
  def __init__(self, predicate: Callable[[BaseException], bool]):
    super().__init__()
    self.predicate = predicate

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and f"{os.sep}orbax{os.sep}" in record.pathname
                and self.predicate(exc))


def drop_logged(predicate: Callable[[BaseException], bool]) -> None:
  """Drops the records Orbax logs through absl's logger with an exception for which
  `predicate(exc)` is true (the exception itself still reaches the caller). Installed once."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropLogged) for f in logger.filters):
    logger.addFilter(_DropLogged(predicate))


@contextlib.contextmanager
def held_stderr(drop: Callable[[BaseException], bool]):
  """Holds what is written to file descriptor 2 inside the block and writes it out afterwards,
  unless the block failed with an exception for which `drop(exc)` is true."""
  filter_unraisable(is_storage_noise)
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # no stderr to hold
    yield
    return
  read_fd, write_fd = os.pipe()
  chunks = []

  def drain():
    while True:
      data = os.read(read_fd, 1 << 16)
      if not data:
        return
      chunks.append(data)

  reader = threading.Thread(target=drain, daemon=True)
  reader.start()
  os.dup2(write_fd, 2)
  os.close(write_fd)
  keep = True
  try:
    yield
  except BaseException as e:
    keep = not drop(e)
    raise
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees the end
    os.close(saved)
    reader.join(timeout=10)
    os.close(read_fd)
    if keep and chunks:
      os.write(2, b"".join(chunks))
