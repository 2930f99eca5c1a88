"""One interrupt path for every CLI: Ctrl-C or SIGTERM at any moment ends the process within a few
seconds, with exit status 130 and one line, and never leaves a half-written output.

  interrupts.install()              # experiments/__init__.py, before the CLI imports jax
  interrupts.enter_main("segment")  # cli.main, when the program's own work starts
  with interrupts.cooperative() as stop:   # the training loop: finish the step, save, then stop
    ... if stop.caught: ...

How a signal ends the process:
- Before `enter_main` (imports, flag parsing): at once; nothing has been written yet.
- In a program: the Python handler raises KeyboardInterrupt in the main thread, so the staging
  contexts (`files.staged`) remove their folders, or keep a resumable one and name it, and
  `cli.main` prints the line. Inside `cooperative()` the handler only records the signal and the
  training loop stops after its step with a checkpoint.
- A watchdog thread, woken through `signal.set_wakeup_fd` (which works while the main thread sits
  in native code: XLA compiling or running a step, where Python handlers cannot run), ends the
  process itself if the main thread has not done so `GRACE_S` seconds later: it removes the live
  staging folders that cannot be resumed, keeps and names the others, prints the line and exits
  130. A second signal ends the process at once the same way.
- A KeyboardInterrupt raised where Python cannot propagate it (a garbage-collector callback, a
  finalizer) would only print "Exception ignored ... Traceback" and be lost, so the program would
  carry on; `install` catches exactly those unraisable KeyboardInterrupts and has the watchdog end
  the process at once.
Without `install` (the programs called as a library, e.g. by the tests) Python's default
KeyboardInterrupt stays, and `cooperative()` installs its own recording handler.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Optional

from l4f_jax import errors, hardening

GRACE_S = 4.0
FINISH_S = 120.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
  installed = False
  prog: Optional[str] = None
  in_main = False
  caught: Optional[str] = None
  cooperative = 0
  finishing = 0
  lost = False  # a KeyboardInterrupt was raised where it could not propagate
  wake_fd = -1
  note = ""  # what resumes an interrupted run (the training loop's latest checkpoint)


def _prog() -> str:
  if _State.prog:
    return _State.prog
  name = os.path.basename(sys.argv[0] or "l4f_jax")
  return os.path.splitext(name)[0]


def set_note(text: str) -> None:
  """What the hard-exit line says resumes the work (e.g. the latest checkpoint)."""
  _State.note = text


def _exit_now(signame: str) -> None:
  """Removes the live staging folders that cannot be resumed, prints the line, exits 130."""
  from l4f_jax.io import files  # pylint: disable=import-outside-toplevel
  removed, kept = files.abandon_staging()
  if not _State.in_main:
    errors.fail(_prog(), f"stopped by {signame} while starting; nothing was written", code=130)
  if kept:
    what = f"partial outputs are kept in {kept[0]}: the same command resumes from them"
  elif _State.note:
    what = _State.note
  elif removed:
    what = "its partial outputs were removed"
  else:
    what = "nothing was written"
  errors.fail(_prog(), f"stopped by {signame}; {what}", code=130)


@contextlib.contextmanager
def finishing():
  """A stop in progress that must not be cut short (saving the last checkpoint): the watchdog
  waits up to FINISH_S more seconds for it."""
  _State.finishing += 1
  try:
    yield
  finally:
    _State.finishing -= 1


def _handle(signum, frame) -> None:
  del frame
  name = signal.Signals(signum).name
  first = _State.caught is None
  if first:
    _State.caught = name
  if not _State.in_main or not first:
    _exit_now(_State.caught)
  if _State.cooperative:
    return
  raise KeyboardInterrupt(name)


def _watch(read_fd: int) -> None:
  wanted = {int(s) for s in SIGNALS}
  while True:
    try:
      data = os.read(read_fd, 64)
    except OSError:
      return
    if not data:
      return
    if not wanted.intersection(data) and not _State.lost:
      continue
    deadline = time.monotonic() + GRACE_S
    while not _State.lost and (time.monotonic() < deadline or (
        _State.finishing and time.monotonic() < deadline + FINISH_S)):
      time.sleep(0.02)
    _exit_now(_State.caught or "SIGINT")


def _lost_interrupt(info) -> bool:
  """A KeyboardInterrupt Python could not raise: have the watchdog end the process at once."""
  if not issubclass(info.exc_type, KeyboardInterrupt):
    return False
  _State.lost = True
  try:
    os.write(_State.wake_fd, b"\xff")
  except OSError:
    pass
  return True


def install() -> None:
  """Installs the handlers and the watchdog (main thread, once per process)."""
  if _State.installed or threading.current_thread() is not threading.main_thread():
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  _State.wake_fd = write_fd
  for sig in SIGNALS:
    signal.signal(sig, _handle)
  threading.Thread(target=_watch, args=(read_fd,), name="l4f-interrupt-watchdog",
                   daemon=True).start()
  hardening.filter_unraisable(_lost_interrupt)
  _State.installed = True


def enter_main(prog: str) -> None:
  """From here on a signal unwinds the program (module docstring)."""
  _State.prog = prog
  _State.in_main = True


def summary() -> str:
  """The interrupt line's text after the main thread unwound (its staging folders are gone)."""
  return f"stopped by {_State.caught or 'SIGINT'}; {_State.note or 'nothing was written'}"


def caught() -> Optional[str]:
  """The name of the signal that asked the process to stop, if any."""
  return _State.caught


class _Recorder:
  caught: Optional[str] = None


@contextlib.contextmanager
def cooperative():
  """Inside: SIGINT / SIGTERM are recorded (`.caught` of the yielded object) instead of raised,
  for a loop that stops at its next safe point. A second signal raises KeyboardInterrupt (library
  use) or ends the process (CLI)."""
  rec = _Recorder()
  if _State.installed:
    _State.cooperative += 1
    try:
      class _View:
        @property
        def caught(self):
          return _State.caught
      yield _View()
    finally:
      _State.cooperative -= 1
    return
  def handle(signum, frame):
    del frame
    if rec.caught is not None:
      raise KeyboardInterrupt
    rec.caught = signal.Signals(signum).name
  old = {}
  for sig in SIGNALS:
    try:
      old[sig] = signal.signal(sig, handle)
    except ValueError:  # not the main thread
      pass
  try:
    yield rec
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
