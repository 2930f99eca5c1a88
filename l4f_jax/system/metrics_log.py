"""Run logging: console progress (it/s, ETA), metrics as JSON lines and TensorBoard scalars.

Only process 0 writes; other processes get a writer that does nothing. Metrics are fetched from the
device only when they are logged (every N steps), never inside the step loop's hot path.
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import sys
import time
from typing import Mapping, Optional

import jax
import numpy as np
from absl import logging


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
  """Throughput and ETA over the steps run in this process (resumed steps excluded)."""

  def __init__(self, first_step: int, last_step: int):
    self.first, self.last = first_step, last_step
    self.t0 = time.perf_counter()
    self._mark = (first_step, self.t0)

  def line(self, step: int) -> str:
    now = time.perf_counter()
    s0, t0 = self._mark
    rate = (step - s0) / max(now - t0, 1e-9)
    self._mark = (step, now)
    eta = (self.last - step) / rate if rate > 0 else float("inf")
    return f"step {step}/{self.last}  {rate:.2f} it/s  ETA {_fmt_time(eta) if rate > 0 else '?'}"

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0


class MetricsWriter:
  """Appends {"step": s, **scalars} to `metrics.jsonl` and writes TensorBoard scalars."""

  def __init__(self, logdir: str, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.logdir = logdir
    self._tb = None
    if self.enabled:
      os.makedirs(logdir, exist_ok=True)
      self._tb = _summary_writer()(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {k: float(np.asarray(v)) for k, v in scalars.items()}
    with open(os.path.join(self.logdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps({"step": int(step), **row}) + "\n")
    for k, v in row.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer():
  """tensorboardX's SummaryWriter (event files without TensorFlow), imported without torch:
  tensorboardX imports torch when it is installed (1.4 s) only to accept torch tensors, which
  this project never passes."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def write_json(path: str, obj) -> None:
  """Atomic JSON write (temp file + rename)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO/DEBUG records emitted from inside noisy libraries (Orbax logs dozens per save),
  and tfds's warning that a builder uses a config it does not list (every builder here does)."""

  def __init__(self, fragments):
    super().__init__()
    self.fragments = tuple(fragments)

  def filter(self, record):
    if not any(f in record.pathname for f in self.fragments):
      return True
    if str(record.msg).startswith("Using custom data configuration"):
      return False
    return record.levelno >= logging_std.WARNING


def quiet_library_logs(fragments=("/orbax/", "/tensorflow_datasets/", "/etils/")) -> None:
  """Keep third-party INFO lines (including those from background save threads) off the console."""
  logger = logging_std.getLogger("absl")
  if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
    logger.addFilter(_DropLibraryInfo(fragments))


def log_console(msg: str) -> None:
  if jax.process_index() == 0:
    logging.info(msg)
