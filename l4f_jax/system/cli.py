"""What every CLI in experiments/ shares: process-level flags and the run wrapper.

  define_flags(TrainConfig); cli.define_distributed_flags()
  @cli.main("train")
  def main(argv):
    cli.init_distributed()
    train_and_evaluate(from_flags(TrainConfig))

`cli.main(prog)` rejects positional arguments, prints a UserError as one line
(`prog: error: ...`, exit 2; its detail follows with --verbose) and an interrupted run's line with
exit 130 (`system.interrupts`: Ctrl-C or SIGTERM at any moment); `cli.run(main)` is `app.run` with
flag errors reported the same way.
"""
from __future__ import annotations

import functools

from absl import flags

from l4f_jax import errors
from l4f_jax.config import ParseOnly
from l4f_jax.system import interrupts

_VERBOSE = flags.DEFINE_bool("verbose", False, "After an error's line, print its detail (e.g. the "
                             "library's own message).")


def define_distributed_flags(flag_values=flags.FLAGS) -> None:
  """--coordinator_address / --num_processes / --process_id (GPU hosts; TPU pods, SLURM and Open
  MPI need none: they are detected)."""
  from l4f_jax.config import calling_module  # pylint: disable=import-outside-toplevel
  kw = dict(flag_values=flag_values, module_name=calling_module())
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU hosts; TPU pods, "
                      "SLURM and Open MPI need none).", **kw)
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).",
                       **kw)
  flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).",
                       **kw)


def init_distributed(flag_values=flags.FLAGS) -> None:
  """jax.distributed from the flags above (all three or none), or auto-detected."""
  from l4f_jax.system import sharding  # pylint: disable=import-outside-toplevel
  multi = (flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
  if any(v is not None for v in multi) and any(v is None for v in multi):
    raise errors.UserError("--coordinator_address, --num_processes and --process_id go together; "
                           "pass all three (e.g. --coordinator_address=host0:1234 "
                           "--num_processes=2 --process_id=0) or none")
  sharding.maybe_initialize_distributed(*multi)


def main(prog: str):
  """Decorator of an absl main: one-line errors (exit 2), interrupted runs exit 130."""
  def wrap(fn):
    @errors.cli_main(prog, verbose=lambda: _VERBOSE.value)
    @functools.wraps(fn)
    def inner(argv):  # pylint: disable=missing-docstring
      from l4f_jax.io import files  # pylint: disable=import-outside-toplevel
      from l4f_jax.system import metrics_log  # pylint: disable=import-outside-toplevel
      interrupts.install()
      interrupts.enter_main(prog)
      metrics_log.quiet_library_logs()
      try:
        return fn(argv)
      except ParseOnly:
        print(f"{prog}: the flags parse")
        return None
      except files.Interrupted as e:
        errors.fail(prog, str(e), code=130)
      except KeyboardInterrupt:
        errors.fail(prog, interrupts.summary(), code=130)
    inner.prog = prog
    return inner
  return wrap


def run(main_fn) -> None:
  """`app.run` of a `cli.main`-decorated main, with flag errors (unknown flag, malformed value)
  reported as the same one line (exit 2)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  interrupts.install()
  app.run(main_fn, flags_parser=errors.flags_parser(main_fn.prog))
