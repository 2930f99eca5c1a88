r"""Throughput benchmarks: the JAX port next to the PyTorch reference, in one run.

  python -m experiments.benchmark --what=iteration --config=cpu --repeats=5
  python -m experiments.benchmark --what=generator,iteration --config=gpu256
  python -m experiments.benchmark --what=generator --size=256 --batch=4 --repeats=5

Both sides run identical weights (the torch reference modules, converted with l4f_jax.system.convert)
and are timed INTERLEAVED (JAX call, torch call, JAX call, ...), so that a varying machine load
affects both alike; the load average is printed with every figure. Medians over --repeats timed
calls after one warm-up call each; the JAX compile time is measured on its own (AOT lower+compile).

`generator`: G forward img/s (mapping + synthesis, random z, fresh noise):
  JAX   jit, non-fused modulated conv (the training formulation); block_until_ready per call.
  torch l4f_jax/reference/torch_stylegan2.py under no_grad, fused (batch-grouped) modulated conv as
        the official code, and non-fused (--torch_modconv; `nonfused_depthwise` also blurs with one
        channel-grouped conv instead of rosinality's native CPU upfirdn2d: a lean PyTorch G).
`iteration`: the full Labels4Free iteration (D step, lazy R1, A step), it/s:
  JAX   step.train_step with latents and noise drawn inside the program, the state donated, no host
        sync but the final block_until_ready; `devices` emulated as minibatch-stddev chunks.
  torch l4f_jax/reference/torch_labels4free.official_iteration (official loop, D per emulated
        device, separate real/fake D calls), latents and noise drawn by torch.randn; G with
        rosinality's fused modulated conv (the official path), with its non-fused path, and with the
        non-fused path and depthwise blurs in G and D (--torch_modconv picks).
  The plain and the R1 iteration are timed separately; it/s is amortised over d_reg_every:
  t = ((k - 1) t_plain + t_r1) / k. FLOPs per iteration: XLA's cost analysis of the compiled JAX
  programs (amortised the same way), next to an analytic count (2 x conv/linear MACs, backward =
  2 x forward); the torch FLOP/s use the same count.

Configurations (--config; the flags --size/--batch/--channel_multiplier apply without one):
  tiny     32 px toy (smoke test only)
  cpu      the built-in world's generator (experiments/assets/shapes64): 64 px, style 128, 2 mapping layers, channels
           min(1024/res, 64); batch 8 = 4 emulated devices x 2 (the official FFHQ/Horse/Cat runs)
  cpu_wide 64 px, style 512, 8 mapping layers, channels min(16384/res, 256); 4 x 2
  gpu256 / gpu512 / gpu1024   config-f (style 512, 8 mapping layers, channel_multiplier 2); 4 x 2

The benchmarks live in `l4f_jax.programs.benchmarking` (add one there: `bench_<name>(args)` registered
in BENCHMARKS); its flags are the fields of `BenchmarkConfig` there; this CLI prints the report.
"""
from __future__ import annotations

import os

from l4f_jax.config import define_flags, from_flags
from l4f_jax.errors import UserError
from l4f_jax.programs.benchmarking import BENCHMARKS, BenchmarkConfig, load, plan, report
from l4f_jax.system import cli

define_flags(BenchmarkConfig)


@cli.main("benchmark")
def main(argv):
  del argv
  cfg = from_flags(BenchmarkConfig)
  whats, args = plan(cfg)
  if cfg.torch:
    from l4f_jax.system.convert import import_torch  # pylint: disable=import-outside-toplevel
    try:
      import_torch("timing the PyTorch reference")
    except UserError as e:
      raise UserError(f"{e}; or pass --notorch to time JAX alone") from None
  if cfg.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cfg.xla_flags).strip()
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {load()}", flush=True)
  for w in whats:
    for line in report(w, args, BENCHMARKS[w](args)):
      print(line, flush=True)


if __name__ == "__main__":
  cli.run(main)
