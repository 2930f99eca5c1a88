"""Output directories that never cost the user anything: checked before any work, assembled in a
staging folder next to the destination, renamed into place.

  out = check_output_dir(cfg.out, cfg.overwrite, program="segment", summary="segment.json",
                         owned=OUTPUTS, inputs=[("--images", cfg.images)])
  with staged(out, program="segment", settings=..., resumable=True) as st:
    ... write into st.path, skipping what st.journal says a killed run already did ...
    st.commit()                 # out appears complete, or not at all; an old out is swapped out

- `check_output_dir`: `--out` may not be a file, an unwritable place, an input, inside an input or
  holding one. An existing non-empty `--out` is replaced only with `--overwrite`, and only when it
  holds the same program's output (its summary file, and nothing but the names it writes).
- `staging_dir(dst)` makes `.<name>.tmp-XXXX` next to `dst`, marked with the program, its settings
  and the process (`STAGING_MARK`). A staging folder that a killed run of the same destination left
  (its process is gone) is removed, saying so, or, for a resumable program with the same settings,
  reused: its journal lists the inputs already done. A live one (another process) is refused.
- Every live staging folder is registered, so that the interrupt watchdog (`system.interrupts`)
  can remove it (or keep a resumable one) when it ends the process.

`tempfile.mkdtemp` creates 0700 folders; a renamed one would keep that mode and lock other users
(and other hosts' service accounts) out of shared weight and dataset directories, so the staging
folder gets the mode a plain `mkdir` would (0777 minus the process umask).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from typing import Iterable, Optional

from absl import logging

from l4f_jax.errors import UserError

TMP_PREFIX = ".tmp_"  # files being written by `atomic_write`
STAGING_MARK = ".l4f_staging.json"
JOURNAL = ".l4f_journal.jsonl"
_LIVE: dict = {}  # staging path -> resumable (for the interrupt watchdog)
_LIVE_LOCK = threading.Lock()


def dir_mode() -> int:
  """The mode `os.mkdir` gives under the current umask."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o777 & ~mask


def atomic_write(path, write) -> None:
  """Calls `write(tmp)` for a temporary file next to `path`, then renames it to `path`: a reader
  sees the old file or the whole new one, never a part."""
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # EPERM: it exists
    return True
  return True


def _read_mark(folder: str) -> Optional[dict]:
  try:
    with open(os.path.join(folder, STAGING_MARK)) as f:
      mark = json.load(f)
  except (OSError, ValueError):
    return None
  return mark if isinstance(mark, dict) else None


def _leftovers(dst: str) -> list[str]:
  """Staging folders of `dst` (ours: they carry STAGING_MARK)."""
  parent, prefix = os.path.dirname(dst), f".{os.path.basename(dst)}.tmp-"
  try:
    names = sorted(os.listdir(parent))
  except OSError:
    return []
  return [os.path.join(parent, n) for n in names
          if n.startswith(prefix) and _read_mark(os.path.join(parent, n)) is not None]


def _register(path: str, resumable: bool) -> None:
  with _LIVE_LOCK:
    _LIVE[os.path.abspath(path)] = resumable


def _unregister(path: str) -> None:
  with _LIVE_LOCK:
    _LIVE.pop(os.path.abspath(path), None)


def abandon_staging() -> tuple[list[str], list[str]]:
  """(removed, kept): removes every live staging folder that cannot be resumed; the resumable ones
  are kept. Called by the interrupt watchdog just before it ends the process."""
  with _LIVE_LOCK:
    live = dict(_LIVE)
    _LIVE.clear()
  removed, kept = [], []
  for path, resumable in live.items():
    if resumable:
      kept.append(path)
    else:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed, kept


def staging_dir(dst: str, program: str = "", settings=None, resumable: bool = False) -> str:
  """A folder next to `dst` (parents created) to assemble `dst` in; see the module docstring for
  what happens to a staging folder of `dst` that an earlier run left. Returns its path; a reused
  folder keeps its journal (`read_journal`)."""
  dst = os.path.abspath(dst)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  here = socket.gethostname()
  for old in _leftovers(dst):
    mark = _read_mark(old) or {}
    if mark.get("host") == here and mark.get("pid") != os.getpid() and _pid_alive(
        int(mark.get("pid", -1))):
      raise UserError(f"{dst} is being written by process {mark.get('pid')} ({old}); wait for it "
                      "or choose another destination")
    if mark.get("host") not in (here, None):
      continue  # another machine's: it may be live
    if (resumable and mark.get("program") == program and mark.get("resumable")
        and mark.get("settings") == settings):
      _write_mark(old, program, settings, resumable)
      _register(old, resumable)
      return old
    shutil.rmtree(old, ignore_errors=True)
    logging.info("removed %s, left by an interrupted %s run", old, mark.get("program") or "earlier")
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  os.chmod(tmp, dir_mode())
  _write_mark(tmp, program, settings, resumable)
  _register(tmp, resumable)
  return tmp


def _write_mark(folder: str, program: str, settings, resumable: bool) -> None:
  path = os.path.join(folder, STAGING_MARK)
  with open(path + ".new", "w") as f:
    json.dump({"program": program, "settings": settings, "resumable": resumable,
               "host": socket.gethostname(), "pid": os.getpid()}, f)
  os.replace(path + ".new", path)


def _journal_name(process: int) -> str:
  """Process 0's journal is JOURNAL; process k > 0 of a multi-process run writes its own."""
  return JOURNAL if process == 0 else JOURNAL.replace(".jsonl", f".{int(process)}.jsonl")


def _journals(folder: str) -> list[str]:
  stem = JOURNAL[:-len(".jsonl")]
  try:
    return sorted(n for n in os.listdir(folder) if n.startswith(stem) and n.endswith(".jsonl"))
  except OSError:
    return []


def read_journal(folder: str) -> list[dict]:
  """The entries `append_journal` wrote into a staging folder, of every process (a torn last
  line is dropped)."""
  rows = []
  for name in _journals(folder):
    try:
      with open(os.path.join(folder, name)) as f:
        for line in f:
          try:
            rows.append(json.loads(line))
          except ValueError:
            break
    except OSError:
      pass
  return rows


def append_journal(folder: str, entries: Iterable[dict], process: int = 0) -> None:
  """Records inputs whose outputs are complete in the staging folder (flushed to disk); each
  process of a multi-process run appends to a journal of its own."""
  with open(os.path.join(folder, _journal_name(process)), "a") as f:
    for e in entries:
      f.write(json.dumps(e) + "\n")
    f.flush()
    os.fsync(f.fileno())


def remove_staging(tmp: str) -> None:
  _unregister(tmp)
  shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str, dst: str) -> None:
  """Renames `tmp` to `dst` (its staging marks dropped); an existing `dst` is first moved aside
  and deleted after the swap."""
  dst = os.path.abspath(dst)
  for name in [STAGING_MARK] + _journals(tmp):
    if os.path.exists(os.path.join(tmp, name)):
      os.remove(os.path.join(tmp, name))
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
  _unregister(tmp)


class Interrupted(UserError):
  """Work stopped by a signal after saving what it could (the CLIs exit with status 130)."""


class Staging:
  """A staging folder in use (`staged`): `path`, `journal` (entries of a resumed run), `commit()`.
  Process k > 0 of a multi-process run holds one over the folder process 0 made (`sweep=False`:
  only process 0 removes what a killed run was writing) and records into its own journal."""

  def __init__(self, path: str, dst: str, resumable: bool, process: int = 0, sweep: bool = True):
    self.path, self.dst, self.resumable, self.process = path, dst, resumable, process
    self.journal = read_journal(path) if resumable else []
    self.committed = False
    for root, _, names in os.walk(path) if sweep else ():  # files a killed run was writing
      for name in names:
        if name.startswith(TMP_PREFIX):
          os.remove(os.path.join(root, name))

  def record(self, entries: Iterable[dict]) -> None:
    append_journal(self.path, entries, self.process)

  def commit(self) -> None:
    replace_dir(self.path, self.dst)
    self.committed = True


@contextlib.contextmanager
def staged(dst: str, *, program: str, settings=None, resumable: bool = False):
  """`staging_dir` as a context: on an error the folder is removed; on Ctrl-C / SIGTERM a
  resumable one is kept and `Interrupted` names it."""
  st = Staging(staging_dir(dst, program, settings, resumable), os.path.abspath(dst), resumable)
  if st.journal:
    logging.info("resuming from %s: %d input(s) already done", st.path, len(st.journal))
  try:
    yield st
  except KeyboardInterrupt as e:
    if not resumable:
      remove_staging(st.path)
      raise
    _unregister(st.path)
    raise Interrupted(f"stopped by {e.args[0] if e.args else 'SIGINT'}; partial outputs are kept "
                      f"in {st.path}: the same command resumes from them") from None
  except BaseException:
    remove_staging(st.path)
    raise
  if not st.committed:
    remove_staging(st.path)


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


def _real(path: str) -> str:
  return os.path.realpath(os.path.abspath(path))


def check_disjoint(out: str, inputs: Iterable[tuple[str, str]], flag: str = "--out") -> None:
  """Refuses (one line) an output path that is one of the inputs, lies inside one, or holds one.
  `inputs`: (flag, path) pairs; empty paths are ignored."""
  o = _real(out)
  for in_flag, path in inputs:
    if not path:
      continue
    r = _real(path)
    if o == r:
      raise UserError(f"{flag}={out} is also the input {in_flag}; choose a new {flag}")
    if r.startswith(o.rstrip(os.sep) + os.sep):
      raise UserError(f"{flag}={out} holds the input {in_flag}={path}; choose another {flag}")
    if o.startswith(r.rstrip(os.sep) + os.sep) and os.path.isdir(r):
      raise UserError(f"{flag}={out} lies inside the input {in_flag}; choose a {flag} outside it")


def check_output_dir(out: str, overwrite: bool, *, program: str, summary: str,
                     owned: Iterable[str], inputs: Iterable[tuple[str, str]] = (),
                     flag: str = "--out") -> str:
  """Absolute `out` after the checks of the module docstring (one-line refusals). `summary`: the
  file every finished output of `program` holds; `owned`: every top-level name it writes."""
  path = os.path.abspath(out)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={out} is a file; pass a directory")
  check_disjoint(path, inputs, flag)
  present = sorted(os.listdir(path)) if os.path.isdir(path) else []
  if present:
    owned = set(owned) | {summary}
    foreign = [n for n in present if n not in owned]
    if foreign or summary not in present:
      example = foreign[0] if foreign else f"no {summary}"
      raise UserError(f"{flag}={out} holds files that {program} did not write (e.g. {example}); "
                      f"choose a new {flag} (--overwrite replaces only {program}'s own output)")
    if not overwrite:
      raise UserError(f"{flag}={out} holds an earlier {program} output; pass --overwrite to "
                      f"replace it or choose a new {flag}")
  check_writable_dir(path, flag)
  return path
