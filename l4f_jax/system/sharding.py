"""Data parallelism over one mesh axis spanning every device of every host.

The per-device step is written as pmap would have it (per-device batch, explicit `pmean`) and run with
`jax.shard_map` under `jax.jit` over a 1-D Mesh named `data`:

  step = data_parallel(per_device_step, mesh, in_specs=(REPLICATED, SHARDED, ...), out_specs=...)

Parameters and optimizer states are replicated; batches are sharded along their leading axis, so each
device sees its own rows (and its own minibatch-stddev groups).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from l4f_jax.io import files

AXIS = "data"
REPLICATED = P()
SHARDED = P(AXIS)


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE")


def in_cluster() -> bool:
  """True when the environment describes a multi-process job (TPU pod slice, SLURM, Open MPI)."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or any(k in os.environ for k in _CLUSTER_ENV)


def maybe_initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> None:
  """`jax.distributed.initialize`: from explicit values (GPU hosts), or auto-detected on a TPU pod slice
  or under SLURM / Open MPI (no flags needed). A plain single-process run does nothing."""
  if coordinator or num_processes:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  elif in_cluster():
    jax.distributed.initialize()
  logging.info("process %d/%d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def barrier(name: str) -> None:
  """Every process of a multi-process run waits here for the others (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def broadcast_text(text: str, limit: int = 4096) -> str:
  """Process 0's `text` on every process (e.g. a staging folder's path)."""
  if jax.process_count() == 1:
    return text
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.frombuffer(text.encode().ljust(limit, b"\0")[:limit], np.uint8)
  return bytes(multihost_utils.broadcast_one_to_all(data)).rstrip(b"\0").decode()


@contextlib.contextmanager
def shared_staged(dst: str, *, program: str, settings=None, resumable: bool = False):
  """`files.staged` for all processes of a run on a shared file system: process 0 makes (or
  resumes) the staging folder, removes it on failure and commits it; every other process writes
  its own outputs into the same folder and records them in its own journal
  (`files.Staging(process=k)`). The per-input programs (segment, invert) use it as

    with shared_staged(out, program=..., settings=..., resumable=True) as st:
      for k, path, stem in process_share(paths, stems, st.journal): ... st.record([...])
      entries = gather_journal(st, paths)     # waits for every process's share
      ... the summary, from `entries` (the same on every process) ...
      commit_shared(st, finish)               # process 0: finish(st.path), then commit

  so `dst` appears complete or not at all. Every process leaves the block only once process 0 has
  committed (a barrier); an error leaves it at once."""
  if jax.process_index() == 0:
    with files.staged(dst, program=program, settings=settings, resumable=resumable) as st:
      broadcast_text(st.path)
      yield st
  else:
    path = broadcast_text("")
    yield files.Staging(path, os.path.abspath(dst), resumable, process=jax.process_index(),
                        sweep=False)
  barrier(f"l4f_{program}_committed")


def process_share(paths: Sequence[str], stems: Sequence[str],
                  journal: Iterable[dict] = ()) -> list[tuple[int, str, str]]:
  """(k, path, stem) of the inputs this process handles: every process_count-th, from its
  process_index (all of them with one process), less those a killed run's `journal` lists."""
  done = {e.get("file") for e in journal}
  n, me = jax.process_count(), jax.process_index()
  return [(k, p, s) for k, (p, s) in enumerate(zip(paths, stems))
          if k % n == me and os.path.abspath(p) not in done]


def gather_journal(st: files.Staging, paths: Sequence[str]) -> list[Optional[dict]]:
  """Waits for every process's share (a barrier), then returns each input's journal entry (of any
  process, this run's or a killed run's) in input order; None for an input nobody recorded."""
  barrier("l4f_shared_outputs")
  by_file = {e.get("file"): e for e in files.read_journal(st.path)}
  return [by_file.get(os.path.abspath(p)) for p in paths]


def commit_shared(st: files.Staging, finish: Optional[Callable[[str], None]] = None) -> None:
  """Process 0 calls `finish(st.path)` (the summary and other whole-run outputs) and renames the
  staging folder into place; the other processes do nothing (`shared_staged` waits for it)."""
  if jax.process_index() == 0:
    if finish is not None:
      finish(st.path)
    st.commit()


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices (independent work per process, no collectives)."""
  return Mesh(np.asarray(jax.local_devices()), (AXIS,))


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over all (or the first `num_devices`) devices, axis name `data`."""
  devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a tree on every device of the mesh (same values on every host).

  Leaves go through host memory first: device arrays cannot be transferred across hosts, and on a
  1-device mesh `device_put` could otherwise alias the caller's arrays, which a donating step would
  then delete.
  """
  return jax.device_put(jax.device_get(tree), NamedSharding(mesh, REPLICATED))


def shard_host_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assemble each host's rows into one global array sharded over `data` (host order = row order)."""
  sharding = NamedSharding(mesh, SHARDED)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def data_parallel(fn: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
  """shard_map `fn` over the mesh's data axis (pmap semantics; collectives use axis name `data`)."""
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def to_host(tree: Any) -> Any:
  """Fully replicated device arrays -> numpy (process-local copy; no cross-host gather needed)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else np.asarray(x), tree)
