"""The one user-facing error type and the one-line formatter every CLI shares.

Library code raises `UserError("--flag=value: what is wrong; how to fix it")`. A CLI's `main` is
wrapped by `cli_main(prog)`, which prints `prog: error: <message>` (one line, no traceback) to stderr
and exits with status 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """Bad input or a refused destination; the message is one line naming the file or flag and the fix."""


def one_line(message: str) -> str:
  """Collapses whitespace and newlines so that an error is always printed on one line."""
  return " ".join(str(message).split())


def fail(prog: str, message: str, code: int = 2):
  print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(code)


def cli_main(prog: str):
  """Decorator for an absl `main(argv)`: rejects positional arguments and turns UserError into one
  line on stderr with exit status 2."""
  def wrap(main):
    @functools.wraps(main)
    def wrapped(argv):
      try:
        if len(argv) > 1:
          raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
        return main(argv)
      except UserError as e:
        fail(prog, str(e))
    return wrapped
  return wrap
