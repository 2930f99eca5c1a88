"""Test configuration: 4 fake CPU devices (must be set before JAX starts) and float32 parity."""
import os

# One OpenMP thread for torch (and numpy's BLAS), here and in every subprocess: at the tests'
# sizes its threads spend more time spinning than computing, and xdist already keeps every core
# busy (tests/test_stylegan2_parity.py alone: 101 s of CPU and 98 s wall with 2 threads, 77 s and
# 79 s with 1, on a machine running one other job). Set before numpy is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Cheap compiles (tests/tiny_world.FAST_XLA): the tests' programs are small, so compiling them
# well costs more than it saves. XLA reads the flags when its backend starts, after this.
from tests.tiny_world import FAST_XLA  # noqa: E402

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_XLA}")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  # Registered, not deselected: slow tests run in the default command (`pytest -m "not slow"` skips).
  config.addinivalue_line("markers", "slow: long-running test (still part of the default run)")


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core, at least 2, at most 4 (each holds 4 fake devices and up to
  about 3 GB)."""
  del config
  return min(max(os.cpu_count() or 1, 2), 4)


# The longest files first, so that no worker is left with a long file while the others idle
# (xdist hands out whole files in this order, `--dist loadfile --no-loadscope-reorder`). Their
# order comes from `--durations=0` of the full suite on 2 cores, summed per file; the other files
# follow in name order.
LONGEST_FIRST = ("test_method_parity", "test_interrupts", "test_hostile", "test_multihost",
                 "test_stylegan2_parity", "test_train_cli", "test_programs", "test_sharding",
                 "test_benchmark", "test_pipeline_cli", "test_docs", "test_inversion", "test_gan",
                 "test_conv", "test_nvidia_e2e", "test_bf16", "test_nvidia", "test_artifact")


def pytest_collection_modifyitems(items):
  rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
  module = lambda item: os.path.splitext(os.path.basename(str(item.fspath)))[0]
  items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: file order kept
