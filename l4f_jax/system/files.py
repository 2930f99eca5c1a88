"""Atomic directory outputs: build in a staging folder next to the destination, then rename.

  tmp = staging_dir(dst)        # .<name>.tmp-XXXX next to dst, with the umask's permissions
  ... write everything into tmp ...
  replace_dir(tmp, dst)         # dst appears complete, or not at all; an old dst is swapped out

`tempfile.mkdtemp` creates 0700 folders; a renamed one would keep that mode and lock other users
(and other hosts' service accounts) out of shared weight and dataset directories, so the staging
folder gets the mode a plain `mkdir` would (0777 minus the process umask).
"""
from __future__ import annotations

import os
import shutil
import tempfile

from l4f_jax.errors import UserError


def dir_mode() -> int:
  """The mode `os.mkdir` gives under the current umask."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o777 & ~mask


def staging_dir(dst: str) -> str:
  """A new empty folder next to `dst` (parents created) to assemble `dst` in."""
  dst = os.path.abspath(dst)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  os.chmod(tmp, dir_mode())
  return tmp


def replace_dir(tmp: str, dst: str) -> None:
  """Renames `tmp` to `dst`; an existing `dst` is first moved aside and deleted after the swap."""
  dst = os.path.abspath(dst)
  if os.path.lexists(dst):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
    os.rename(dst, os.path.join(old, "x"))
    try:
      os.rename(tmp, dst)
    except BaseException:
      os.rename(os.path.join(old, "x"), dst)  # put the old one back
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, dst)


def check_writable_dir(path: str, flag: str) -> None:
  """Refuses a destination that is a file or cannot be created / written (one line)."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={path} is a file; pass a directory")
  probe = path
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise UserError(f"{flag}={path}: {probe} is a file, so the directory cannot be created")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={path}: {probe} is not writable; pass a writable directory")


def check_output_dir(out: str, overwrite: bool, flag: str = "--out") -> str:
  """Absolute `out`; refuses (one line) a file, an unwritable place, or a non-empty directory
  without `overwrite`."""
  path = os.path.abspath(out)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={out} is a file; pass a directory")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise UserError(f"{flag}={out} is not empty; choose a new directory or pass --overwrite")
  check_writable_dir(path, flag)
  return path
