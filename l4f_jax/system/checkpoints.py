"""Training checkpoints with Orbax's CheckpointManager (asynchronous saves, keep-last-N, resume).

A checkpoint holds one pytree `state` (params, optimizer states, step; typed PRNG keys are stored as
their raw key data) and a JSON item `meta` (the run's resolved flags and anything else JSON-able).
Every process takes part in saving; Orbax writes into a temporary directory and commits by rename, so
an interrupted save never leaves a checkpoint that restores. A save that fails (a full disk) has its
temporary directory removed when the failure surfaces, and a run that resumes after a killed save
removes what that save left (`cleanup_tmp_directories`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from l4f_jax import hardening
from l4f_jax.errors import environment_error

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax.checkpoint's TMP_DIR_SUFFIX


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one training run's directory."""

  def __init__(self, directory: str, keep: Optional[int] = 2):
    self.directory = os.path.abspath(directory)
    # A failed asynchronous save is reported once, as one line, when it surfaces here.
    hardening.drop_logged(lambda e: environment_error(e) is not None)
    self._mngr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True))

  @contextlib.contextmanager
  def _failing_cleanly(self):
    """On any failure of a save (which may surface at a later call), the temporary directories
    of the unfinished saves are removed by process 0 before the exception goes on."""
    try:
      yield
    except BaseException:
      if jax.process_index() == 0 and os.path.isdir(self.directory):
        for name in os.listdir(self.directory):
          if TMP_SUFFIX in name:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      raise

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> bool:
    """Start an asynchronous save of `step` (returns at once); the caller decides when to save."""
    with self._failing_cleanly():
      return self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, target: Any, step: Optional[int] = None) -> tuple[int, Any, dict]:
    """Restore `step` (default latest) into the structure, dtypes and shardings of `target`."""
    step = self._mngr.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
    return step, out["state"], out["meta"]

  def restore_meta(self, step: Optional[int] = None) -> dict:
    step = self._mngr.latest_step() if step is None else step
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    with self._failing_cleanly():
      self._mngr.wait_until_finished()

  def close(self) -> None:
    with self._failing_cleanly():
      self._mngr.wait_until_finished()
      self._mngr.close()
