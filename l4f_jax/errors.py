"""The one user-facing error type and the one-line formatter every CLI shares.

Library code raises `UserError("--flag=value: what is wrong; how to fix it")`. A CLI's `main` is
wrapped by `cli_main(prog)`, which prints `prog: error: <message>` (one line, no traceback) to stderr
and exits with status 2. So does a fault of the machine rather than of the program: an OSError (or
an exception caused by one) saying that the disk is full, a quota or the file size limit is
exceeded, the file system is read-only or permission is denied, becomes one line naming the file.
Anything else is a bug and keeps its traceback. `flags_parser(prog)` gives absl's flag errors
(unknown flag, malformed value, unreadable flagfile) the same one-line form:

  app.run(main, flags_parser=errors.flags_parser("train"))
"""
from __future__ import annotations

import errno
import functools
import os
import sys
import threading
from typing import Callable, Optional

from l4f_jax import hardening


MAX_LINE = 200  # characters of an error line, `prog: error: ` included; the rest is `detail`


class UserError(Exception):
  """Bad input or a refused destination; the message is one line naming the file or flag and the
  fix (at most MAX_LINE characters with its prefix). `detail` (e.g. a library's own message) is
  printed after the line only with --verbose."""

  def __init__(self, message: str, detail: Optional[str] = None):
    super().__init__(message)
    self.detail = detail


def one_line(message: str) -> str:
  """Collapses whitespace and newlines so that an error is always printed on one line."""
  return " ".join(str(message).split())


_EXIT = threading.Lock()  # the first thread to fail prints its line; any other waits for the exit


def fail(prog: str, message: str, code: int = 2, detail: Optional[str] = None):
  """Prints the one error line (and `detail` after it, when given) and ends the process at once.
  `os._exit` skips the interpreter's shutdown, where abandoned asynchronous writes of a failed save
  (Orbax / TensorStore tasks) would otherwise print their tracebacks after the line; every output
  is staged and renamed, so nothing is left half-written by not running the shutdown hooks. The
  interrupt watchdog (`system.interrupts`) and the main thread may both end the process: a lock
  lets only the first print."""
  _EXIT.acquire()
  try:
    sys.stdout.flush()
  except Exception:  # pylint: disable=broad-except  # a closed or full stdout must not hide the line
    pass
  text = f"{prog}: error: {one_line(message)}"
  if detail:
    text += "\n" + str(detail).rstrip()
  os.write(2, (text + "\n").encode("utf-8", "replace"))
  os._exit(code)


# errno -> (what happened, what to do). Faults of the machine or of the user's permissions, which
# no change to the program fixes.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("the disk is full", "free space or choose a destination on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or choose another destination"),
    errno.EFBIG: ("the file is too large for the file system or ulimit -f",
                  "raise the limit or choose another destination"),
    errno.EROFS: ("the file system is read-only", "choose a writable destination"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another path"),
}


def _from_message(exc: BaseException) -> Optional[OSError]:
  """An OSError for a library exception that reports an environment errno only in its text
  (TensorStore: "... File too large [os_error_code='27']", array_record: "write() failed: No space
  left on device; writing /path"), naming the last absolute path of the text."""
  import re  # pylint: disable=import-outside-toplevel
  text = str(exc)
  m = re.search(r"os_error_code='?(\d+)", text)
  code = int(m.group(1)) if m and int(m.group(1)) in _ENVIRONMENT_ERRNOS else None
  if code is None:
    code = next((c for c in _ENVIRONMENT_ERRNOS if os.strerror(c) in text), None)
  if code is None:
    return None
  text = text.split("[tensorstore_spec=")[0]  # its JSON repeats the paths, escaped
  paths = re.findall(r"(/[^\s\"';,\]\[\\]+)", text)
  return OSError(code, os.strerror(code), paths[-1] if paths else None)


def environment_error(exc: BaseException) -> Optional[OSError]:
  """The OSError with an errno of `_ENVIRONMENT_ERRNOS` that is `exc` or caused it (following
  __cause__ / __context__; an exception of a storage library that names such an errno only in its
  message counts too), else None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
      return exc
    if not isinstance(exc, (UserError, OSError)):
      found = _from_message(exc)
      if found is not None:
        return found
    exc = exc.__cause__ or exc.__context__
  return None


def _destination(path: str) -> str:
  """The folder a program was writing when it wrote `path`: a file inside a staging folder
  (`.<name>.tmp-XXXX`, Orbax's `<step>.orbax-checkpoint-tmp`) or a tfds `incomplete.*` folder is
  shown as that folder's destination."""
  import re  # pylint: disable=import-outside-toplevel
  parts = os.fspath(path).split(os.sep)
  for i, part in enumerate(parts):
    m = (re.fullmatch(r"\.(.+)\.tmp-[^/]+", part)
         or re.fullmatch(r"(.+)\.orbax-checkpoint-tmp.*", part))  # Orbax's temporary checkpoint
    if m:
      return os.sep.join(parts[:i] + [m.group(1)])
    if part.startswith("incomplete."):
      return os.sep.join(parts[:i])
  return os.fspath(path)


def environment_message(e: OSError) -> str:
  """One line for an environment OSError: what happened, where, what to do."""
  what, fix = _ENVIRONMENT_ERRNOS[e.errno]
  files = [os.fspath(f) for f in (e.filename, e.filename2) if f is not None]
  if not files:
    name = hardening.open_file_in(e)
    files = [name] if name else []
  where = f" writing {_destination(str(files[0]))}" if files else ""
  return f"{what}{where} [Errno {e.errno}]; {fix}"


def cli_main(prog: str, verbose: Callable[[], bool] = lambda: False):
  """Decorator for an absl `main(argv)`: rejects positional arguments and turns UserError (and an
  environment OSError, see the module docstring) into one line on stderr with exit status 2; an
  error's `detail` follows the line when `verbose()`."""
  def wrap(main):
    @functools.wraps(main)
    def wrapped(argv):
      try:
        if len(argv) > 1:
          raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
        return main(argv)
      except UserError as e:
        fail(prog, str(e), detail=e.detail if verbose() else None)
      except Exception as e:  # pylint: disable=broad-except
        env = environment_error(e)
        if env is None:
          raise  # a bug: keep the traceback
        fail(prog, environment_message(env))
    return wrapped
  return wrap


def flags_parser(prog: str):
  """An absl `app.run(..., flags_parser=...)` that reports a flag error (unknown flag, malformed
  value, unreadable --flagfile) as one `prog: error:` line with exit status 2, like a UserError."""
  def parse(argv):
    from absl import flags  # pylint: disable=import-outside-toplevel
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, f"{e}; pass --helpfull to list the flags")
  return parse
