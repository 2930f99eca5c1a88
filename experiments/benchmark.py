r"""Throughput benchmarks: the JAX port next to the PyTorch reference, in one run.

  python -m experiments.benchmark --what=generator --size=256 --batch=4 --repeats=5

`generator`: forward img/s of G (mapping + synthesis, random z, fresh noise) with identical weights:
  JAX   jit, non-fused modulated conv (the training formulation), after a warm-up call; the
        compile time is reported separately; every call ends with block_until_ready.
  torch tests/reference/torch_stylegan2.py under torch.no_grad, fused (batch-grouped) modulated
        conv as the official code, on the CPU (the reference is CPU-only).
Reported: the median over --repeats timed calls, and the JAX/torch throughput ratio.

Add a benchmark by writing `bench_<name>(args) -> list[Result]` and registering it in BENCHMARKS.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from typing import Callable

from absl import app, flags

_WHAT = flags.DEFINE_string("what", "generator", "Benchmark to run (see BENCHMARKS).")
_SIZE = flags.DEFINE_integer("size", 256, "Image size.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
_CHANNEL_MULTIPLIER = flags.DEFINE_integer("channel_multiplier", 2, "1 or 2 (config-f).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: default).")


class BenchmarkError(Exception):
  """Bad input; one line naming the flag."""


@dataclasses.dataclass
class Args:
  size: int
  batch: int
  repeats: int
  channel_multiplier: int = 2
  torch: bool = True
  torch_threads: int = 0


@dataclasses.dataclass
class Result:
  name: str
  seconds: list[float]          # per timed call
  items: int                    # images per call
  compile_s: float | None = None
  note: str = ""

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def rate(self) -> float:
    return self.items / self.median


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def bench_generator(args: Args) -> list[Result]:
  """G forward img/s: JAX (jit, non-fused) and the torch reference (no_grad, fused)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from l4f_jax.models.stylegan2 import Generator  # noqa: PLC0415

  g_kw = dict(size=args.size, channel_multiplier=args.channel_multiplier)
  results = []
  if args.torch:
    import torch  # noqa: PLC0415

    from l4f_jax.system.convert import convert_generator  # noqa: PLC0415
    from tests.reference.torch_stylegan2 import Generator as TorchGenerator  # noqa: PLC0415

    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    tg = TorchGenerator(**g_kw).eval()
    _, params, _ = convert_generator(tg.state_dict())
    params = jax.tree.map(np.asarray, params)
  else:
    params = Generator(**g_kw).init(jax.random.PRNGKey(0), np.zeros((1, 512), np.float32),
                                    noise_key=jax.random.PRNGKey(1))["params"]
  gen = Generator(**g_kw, fused_modconv=False)
  params = jax.device_put(params)

  @jax.jit
  def forward(p, key):
    kz, kn = jax.random.split(key)
    z = jax.random.normal(kz, (args.batch, 512))
    return gen.apply({"params": p}, z, noise_key=kn)[0]

  keys = iter(jax.random.split(jax.random.PRNGKey(1), args.repeats + 2))
  t = time.perf_counter()
  forward(params, next(keys)).block_until_ready()
  compile_s = time.perf_counter() - t
  forward(params, next(keys)).block_until_ready()  # warm-up of the compiled function
  secs = _time(lambda: forward(params, next(keys)).block_until_ready(), args.repeats)
  dev = jax.devices()[0]
  results.append(Result(f"jax   ({dev.platform}: {dev.device_kind}; jit, non-fused)", secs,
                        args.batch, compile_s))
  if args.torch:
    def torch_forward():
      with torch.no_grad():
        return tg([torch.randn(args.batch, 512)])[0]
    torch_forward()  # warm-up
    secs = _time(torch_forward, args.repeats)
    results.append(Result(f"torch (cpu, {torch.get_num_threads()} threads; no_grad, fused)", secs,
                          args.batch))
  return results


BENCHMARKS: dict[str, Callable[[Args], list[Result]]] = {
    "generator": bench_generator,
}


def report(what: str, args: Args, results: list[Result]) -> list[str]:
  """Formats results as printed lines; with two results, adds the first/second throughput ratio."""
  lines = [f"{what}: size {args.size}, channel_multiplier {args.channel_multiplier}, batch "
           f"{args.batch}, median of {args.repeats}"]
  for r in results:
    comp = f", compile {r.compile_s:.1f} s" if r.compile_s is not None else ""
    lines.append(f"  {r.name}: {r.median * 1e3:.1f} ms/call, {r.rate:.2f} img/s{comp}"
                 f"{' ' + r.note if r.note else ''}")
  if len(results) == 2:
    lines.append(f"  ratio jax/torch throughput: {results[0].rate / results[1].rate:.2f}x")
  return lines


def main(argv):
  try:
    if len(argv) > 1:
      raise BenchmarkError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    if _WHAT.value not in BENCHMARKS:
      raise BenchmarkError(f"--what={_WHAT.value} is unknown; choose one of {sorted(BENCHMARKS)}")
    size = _SIZE.value
    if size < 8 or size & (size - 1):
      raise BenchmarkError(f"--size={size} must be a power of two >= 8")
    if _BATCH.value < 1 or _REPEATS.value < 1:
      raise BenchmarkError("--batch and --repeats must be >= 1")
    if _CHANNEL_MULTIPLIER.value not in (1, 2):
      raise BenchmarkError(f"--channel_multiplier={_CHANNEL_MULTIPLIER.value} must be 1 or 2")
  except BenchmarkError as e:
    sys.exit(f"benchmark: error: {e}")
  args = Args(size, _BATCH.value, _REPEATS.value, _CHANNEL_MULTIPLIER.value, _TORCH.value,
              _TORCH_THREADS.value)
  for line in report(_WHAT.value, args, BENCHMARKS[_WHAT.value](args)):
    print(line)


if __name__ == "__main__":
  app.run(main)
