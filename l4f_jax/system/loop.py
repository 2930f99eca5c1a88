"""The training loop every trainer shares, and the run directory it works in.

  run = open_run(workdir, program="labels4free", config=cfg_dict, identity={...}, keep=2)
  state, start = run.restore_or(state)                     # resume from the latest checkpoint
  state = train_loop(state, batches, step_fn, run=run, start=start, end=n, log_every=10, ...)
  run.close()

`open_run` checks the destination before any work: a file, a read-only place, a directory that is
not a run of this program, a run with another identity (generator, size, batch, devices) or a run
locked by a live process are refused with one line; `--overwrite` (overwrite=True) starts afresh
(only a run directory of the same program is ever deleted). The resolved config goes to
flags.json, written atomically.

`train_loop` runs `step_fn(i, state, batch) -> (state, metrics)` for i = start .. end - 1 with:
- no host sync besides metrics every `log_every` iterations and at checkpoints (it keeps at most
  two steps in flight);
- console progress with it/s and ETA, metrics.jsonl and TensorBoard scalars (process 0);
- a finiteness check of the metrics at every log and every checkpoint: a non-finite loss stops
  the run with one line naming the iteration, and a non-finite state is never saved, so the last
  checkpoint stays the last finite one (a program's `guard`, e.g. Labels4Free's collapse watch,
  stops a run the same way);
- checkpoints every `save_every` iterations and at the end (Orbax, asynchronous, last `keep`);
- a clean stop on Ctrl-C / SIGTERM: the pending checkpoint is finished, files are closed and
  `Interrupted` is raised (the CLIs exit with status 130).
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import json
import math
import os
import shutil
import socket
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np

from l4f_jax.system import interrupts, metrics_log
from l4f_jax.io.files import Interrupted, check_disjoint, check_writable_dir
from l4f_jax.system.checkpoints import Checkpointer
from l4f_jax.errors import UserError

FLAGS_FILE, LOCK_FILE = "flags.json", ".lock"


def _is_main() -> bool:
  return jax.process_index() == 0


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True


@dataclasses.dataclass
class Run:
  """An open run directory (see `open_run`)."""
  workdir: str
  program: str
  config: dict
  identity: dict
  ckpt: Checkpointer
  writer: metrics_log.MetricsWriter
  _lock: Optional[str] = None

  @property
  def latest(self) -> Optional[int]:
    return self.ckpt.latest_step()

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def meta(self, **extra) -> dict:
    return {"program": self.program, "config": self.config, "run": self.identity, **extra}

  def restore_or(self, state) -> tuple[Any, int]:
    """(state, first iteration): the latest checkpoint restored into `state`'s structure and
    shardings, or `state` itself and 0 for a new run."""
    latest = self.latest
    if latest is None:
      return state, 0
    step, state, _ = self.ckpt.restore(state, latest)
    metrics_log.log_console(f"resumed from {self.ckpt.directory} at iteration {step}")
    return state, step

  def save(self, step: int, state) -> None:
    self.ckpt.save(step, state, self.meta(step=step))

  def close(self) -> None:
    try:
      self.ckpt.close()
    finally:
      self.writer.close()
      if self._lock and os.path.exists(self._lock):
        os.remove(self._lock)
      self._lock = None


def _take_lock(workdir: str) -> str:
  """Creates <workdir>/.lock (O_EXCL) holding host and pid; a stale lock of a dead local process
  is replaced. Another live run on the same workdir is refused."""
  path = os.path.join(workdir, LOCK_FILE)
  me = f"{socket.gethostname()} {os.getpid()}"
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(fd, "w") as f:
        f.write(me + "\n")
      return path
    except FileExistsError:
      try:
        host, pid = open(path).read().split()
        pid = int(pid)
      except (OSError, ValueError):
        host, pid = "?", -1
      if host == socket.gethostname() and not _pid_alive(pid):
        os.remove(path)  # stale: that process is gone
        continue
      raise UserError(f"--workdir={workdir} is in use by process {pid} on {host} ({path}); "
                      "wait for it, or remove the lock file if that run is dead") from None
  raise UserError(f"--workdir={workdir}: cannot take the lock {path}")


def open_run(workdir: str, *, program: str, config: dict, identity: dict, keep: int = 2,
             overwrite: bool = False, resume_keys: Iterable[str] = (),
             inputs: Iterable[tuple[str, str]] = ()) -> Run:
  """Checks and opens a run directory (module docstring). `identity` holds the properties a
  checkpoint cannot be resumed across; those in `resume_keys` must match the stored run.
  `inputs` ((flag, path) pairs) may not be, hold or lie inside the run directory."""
  workdir = os.path.abspath(workdir)
  check_writable_dir(workdir, "--workdir")
  check_disjoint(workdir, inputs, "--workdir")
  stored = None
  if os.path.isdir(workdir) and os.listdir(workdir):
    flags_path = os.path.join(workdir, FLAGS_FILE)
    try:
      with open(flags_path) as f:
        stored = json.load(f)
    except (OSError, ValueError):
      stored = None
    if not isinstance(stored, dict) or stored.get("program") != program:
      what = (f"a {stored.get('program')} run" if isinstance(stored, dict) and
              stored.get("program") else "files that are not a run of this program")
      raise UserError(f"--workdir={workdir} holds {what}; pass a new or empty --workdir")
    if overwrite and _is_main():
      if os.path.exists(os.path.join(workdir, LOCK_FILE)):
        _take_lock(workdir)  # refuses a live run; removes a stale lock
        os.remove(os.path.join(workdir, LOCK_FILE))
      shutil.rmtree(workdir)
      stored = None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("l4f_open_run")
  os.makedirs(workdir, exist_ok=True)
  lock = _take_lock(workdir) if _is_main() else None
  try:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep or None)
    latest = ckpt.latest_step()
    interrupts.set_note(f"checkpoint {latest} in {ckpt.directory} resumes the run" if latest else
                        f"no checkpoint yet in {workdir}: the same command starts it afresh")
    if ckpt.latest_step() is not None:
      old = ckpt.restore_meta().get("run", {})
      diff = {k: (old.get(k), identity.get(k)) for k in resume_keys if old.get(k) != identity.get(k)}
      if diff:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise UserError(f"--workdir={workdir} holds a different run ({what}); use a new "
                        f"--workdir, that run's flags ({workdir}/{FLAGS_FILE}) or --overwrite")
    if _is_main():
      metrics_log.write_json(os.path.join(workdir, FLAGS_FILE), {
          "program": program, "config": config, "run": identity,
          "resumed_from": ckpt.latest_step() or 0, "processes": jax.process_count(),
          "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__})
      trim_metrics(os.path.join(workdir, "logs", "metrics.jsonl"), ckpt.latest_step() or 0)
    writer = metrics_log.MetricsWriter(os.path.join(workdir, "logs"))
  except BaseException:
    if lock and os.path.exists(lock):
      os.remove(lock)
    raise
  return Run(workdir=workdir, program=program, config=config, identity=identity, ckpt=ckpt,
             writer=writer, _lock=lock)


def trim_metrics(path: str, first_redone: int) -> None:
  """Drops metrics rows of iterations that a resumed run will redo (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [r for r in f if r.strip() and json.loads(r).get("step", -1) < first_redone]
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(rows)
  os.replace(tmp, path)


def nonfinite(metrics: dict) -> list[str]:
  """Names of the metrics that are NaN or infinite."""
  return [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]


def tree_is_finite(tree) -> bool:
  """True if every floating leaf of a (host or replicated) tree is finite."""
  leaves = [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
            for x in jax.tree.leaves(tree)]
  return all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating))


@dataclasses.dataclass(frozen=True)
class Hook:
  """A periodic action of the training loop, run after iteration i when `due(i)` (clu's
  PeriodicAction does this job; clu 0.0.12's periodic_actions cannot be imported without
  TensorFlow). `action(i, state, metrics)` gets the host metrics of iteration i (fetched once for
  every due hook that `needs_metrics`, else None). Hooks run in list order."""
  name: str
  due: Callable[[int], bool]
  action: Callable[[int, Any, Optional[dict]], None]
  needs_metrics: bool = False


def every(n: int, last: int, phase: int = 0) -> Callable[[int], bool]:
  """Due after iterations i with (i + phase) % n == 0, and after the last one."""
  return lambda i: (i + phase) % n == 0 or i == last


def _builtin_hooks(run: Run, progress, last: int, saved: list, *, log_every: int, save_every: int,
                   sample_every: int, on_sample, console_keys: tuple, guard) -> list[Hook]:
  """The loop's own hooks (see `train_loop`); `saved[0]` tracks the last checkpointed step."""
  log_due, save_due = every(log_every, last), every(save_every, last, phase=1)

  def check(i, _, m):
    bad = nonfinite(m)
    reason = (f"non-finite {', '.join(f'{k}={float(np.asarray(m[k]))}' for k in bad[:3])}"
              if bad else guard(m) if guard else None)
    if reason:
      where = (f"the last good checkpoint is iteration {saved[0]} in {run.ckpt.directory}"
               if saved[0] else "no checkpoint was saved")
      run.ckpt.wait()
      fix = "lower --lr or check the inputs" if bad else "see docs/training.md, collapse watch"
      raise UserError(f"iteration {i}: {reason}; the run stopped and {where}; {fix}")

  def log(i, _, m):
    run.writer.write(i, m)
    metrics_log.log_console(progress.line(i + 1) + "".join(
        f"  {k} {float(m[k]):.4f}" for k in console_keys if k in m))

  def save(i, state, _):
    run.save(i + 1, state)
    saved[0] = i + 1
    interrupts.set_note(f"the latest complete checkpoint in {run.ckpt.directory} resumes the run")

  hooks = [Hook("check", lambda i: log_due(i) or save_due(i), check, needs_metrics=True),
           Hook("log", log_due, log, needs_metrics=True)]
  if on_sample is not None and sample_every:
    hooks.append(Hook("grid", every(sample_every, last), lambda i, s, _: on_sample(i, s)))
  return hooks + [Hook("checkpoint", save_due, save)]


def train_loop(state, batches: Iterable, step_fn: Callable, *, run: Run, start: int, end: int,
               log_every: int, save_every: int, sample_every: int = 0,
               on_sample: Optional[Callable[[int, Any], None]] = None,
               console_keys: Iterable[str] = (), sticky_keys: Iterable[str] = (),
               guard: Optional[Callable[[dict], Optional[str]]] = None,
               profile_steps: Optional[tuple[int, int]] = None, hooks: Iterable[Hook] = ()):
  """Runs iterations start .. end - 1 (module docstring); returns the final state.

  batches: iterable of (i, batch); step_fn(i, state, batch) -> (state, metrics of scalars).
  After each iteration the loop runs its hooks that are due, in this order: the finiteness check
  and `guard` (at every log and checkpoint iteration), metrics and progress (every `log_every`),
  grids (`on_sample(i, state)` every `sample_every`), the checkpoint (after iterations i with
  (i + 1) % save_every == 0), then the caller's `hooks`; each also after the last iteration.
  `sticky_keys` are metrics only some iterations produce (e.g. R1): the latest value is logged.
  `guard(metrics) -> reason or None` stops the run as a non-finite metric does (one line naming
  the iteration; that state is never checkpointed).
  `profile_steps=(a, b)` traces iterations a .. b - 1 with jax.profiler into <workdir>/profile
  (view with TensorBoard's profile plugin or Perfetto), process 0 only.
  """
  profiler = _Profiler(run.path("profile"), profile_steps)
  progress = metrics_log.Progress(start, end)
  in_flight = collections.deque()
  sticky: dict = {}
  saved = [run.latest]
  last = end - 1
  console_keys = tuple(console_keys)
  all_hooks = _builtin_hooks(run, progress, last, saved, log_every=log_every,
                             save_every=save_every, sample_every=sample_every, on_sample=on_sample,
                             console_keys=console_keys, guard=guard) + list(hooks)

  with interrupts.cooperative() as signals:
    try:
      for i, batch in batches:
        profiler.before(i, state)
        state, metrics = step_fn(i, state, batch)
        profiler.after(i, state)
        sticky.update({k: metrics[k] for k in sticky_keys if k in metrics})
        in_flight.append(next(iter(metrics.values())))
        if len(in_flight) > 2:  # wait (no transfer) for iteration i - 2, keeping two queued
          in_flight.popleft().block_until_ready()
        due = [h for h in all_hooks if h.due(i)]
        m = (jax.device_get({**metrics, **sticky}) if any(h.needs_metrics for h in due)
             else None)
        for h in due:
          h.action(i, state, m)
        if signals.caught:
          done = i + 1
          with interrupts.finishing():
            if saved[0] != done:
              run.save(done, state)
            run.ckpt.wait()
          raise Interrupted(f"stopped by {signals.caught} after iteration {i}; checkpoint "
                            f"{done} in {run.ckpt.directory} resumes the run")
    finally:
      profiler.stop()
      close = getattr(batches, "close", None)
      if close is not None:
        close()
  return state


def finish_and_export(run: Run, state, export: Optional[str] = None, config: Optional[dict] = None,
                      trees: Optional[Callable[[Any], dict]] = None, overwrite: bool = True) -> int:
  """The end every trainer shares: the final state is checkpointed (unless the last checkpoint
  holds it) and every pending save finished; with `export`, `trees(state)` (host trees, made on
  every process) is written to the weight directory `export` by process 0 (`weights.save_weights`
  refuses non-finite weights with one line) while the other processes wait at a barrier, so no
  process reads the export or exits before it is in place. Returns the final step."""
  from l4f_jax.system import weights  # pylint: disable=import-outside-toplevel
  done = int(jax.device_get(state.step))
  if run.latest != done:
    run.save(done, state)
  run.ckpt.wait()
  if export:
    host = trees(state)
    if _is_main():
      weights.save_weights(export, config, host, overwrite=overwrite)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"l4f_export_{run.program}")
  return done


def parse_profile_steps(text: str, flag: str = "--profile_steps") -> Optional[tuple[int, int]]:
  """'a:b' -> (a, b) with 0 <= a < b; '' -> None. A malformed value is a one-line UserError."""
  if not text:
    return None
  try:
    a, b = (int(v) for v in text.split(":"))
  except ValueError:
    a = b = -1
  if not 0 <= a < b:
    raise UserError(f"{flag}={text!r}: give iterations as a:b with 0 <= a < b, e.g. "
                    f"{flag}=10:15 traces iterations 10 to 14")
  return a, b


class _Profiler:
  """jax.profiler trace of iterations [a, b) (process 0), synced at both ends so the trace holds
  exactly those steps."""

  def __init__(self, directory: str, steps: Optional[tuple[int, int]]):
    self.directory, self.steps = directory, steps if _is_main() else None
    self.active = False

  def before(self, i: int, state) -> None:
    if self.steps and i == self.steps[0] and not self.active:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, i: int, state) -> None:
    if self.active and i == self.steps[1] - 1:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      metrics_log.log_console(f"profile of iterations {self.steps[0]}..{self.steps[1] - 1} in "
                              f"{self.directory}")


def format_seconds(s: float) -> str:
  return f"{s:.1f} s" if s < 120 else f"{math.floor(s / 60)} min {s % 60:.0f} s"
