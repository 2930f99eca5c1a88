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
in BENCHMARKS); this CLI parses and checks the flags and prints the report.
"""
from __future__ import annotations

import dataclasses
import os

from absl import flags

from l4f_jax.system import cli
from l4f_jax.programs.benchmarking import BENCHMARKS, Args, load, report
from l4f_jax.config import stop_if_parse_only
from l4f_jax.errors import UserError
from l4f_jax.system.flops import CONFIGS

_WHAT = flags.DEFINE_string("what", "generator", "Benchmark(s) to run, comma-separated, or 'all' "
                            "(see BENCHMARKS).")
_CONFIG = flags.DEFINE_string("config", None, "Named configuration (see CONFIGS); iteration "
                              "defaults to 'cpu'.")
_SIZE = flags.DEFINE_integer("size", 256, "Image size (without --config).")
_BATCH = flags.DEFINE_integer("batch", None, "Batch size (default: the config's, else 4).")
_DEVICES = flags.DEFINE_integer("devices", None, "Emulated devices the batch is split into "
                                "(default: the config's).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
_CHANNEL_MULTIPLIER = flags.DEFINE_integer("channel_multiplier", 2, "1 or 2 (config-f).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_TORCH_THREADS = flags.DEFINE_list("torch_threads", ["1", "0"], "torch.set_num_threads values, each "
                                   "timed (interleaved); 0 = torch's default (all cores). The "
                                   "ratio uses the fastest.")
_TORCH_MODCONV = flags.DEFINE_multi_enum("torch_modconv", ["fused", "nonfused"],
                                         ["fused", "nonfused", "nonfused_depthwise"],
                                         "torch reference(s) to time: rosinality's fused "
                                         "(batch-grouped) modulated conv, the official path; its "
                                         "non-fused path; and the non-fused path with every blur "
                                         "as one depthwise conv (a lean PyTorch StyleGAN2).")
_TORCH_DEVICE = flags.DEFINE_enum("torch_device", "auto", ["auto", "cpu", "cuda"],
                                  "Device of the torch reference (auto: cuda when available).")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                                   "JAX compute dtype of G and D (L4FConfig.compute_dtype); "
                                   "bfloat16 also prints its parity against float32.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS before JAX starts.")


@cli.main("benchmark")
def main(argv):
  del argv
  whats = sorted(BENCHMARKS) if _WHAT.value == "all" else _WHAT.value.split(",")
  for w in whats:
    if w not in BENCHMARKS:
      raise UserError(f"--what={w} is unknown; choose from {sorted(BENCHMARKS)} or all")
  name = _CONFIG.value or ("cpu" if "iteration" in whats else None)
  if name is not None and name not in CONFIGS:
    raise UserError(f"--config={name} is unknown; choose one of {sorted(CONFIGS)}")
  config = CONFIGS[name] if name else None
  if config is not None and _DEVICES.value:
    config = dataclasses.replace(config, devices=_DEVICES.value)
  size = config.size if config else _SIZE.value
  if size < 8 or size & (size - 1):
    raise UserError(f"--size={size} must be a power of two >= 8")
  batch = _BATCH.value or (config.batch if config else 4)
  if batch < 1 or _REPEATS.value < 1:
    raise UserError("--batch and --repeats must be >= 1")
  if not _TORCH_THREADS.value or not all(n.isdigit() for n in _TORCH_THREADS.value):
    raise UserError(f"--torch_threads={_TORCH_THREADS.value} must be integers >= 0")
  if _CHANNEL_MULTIPLIER.value not in (1, 2):
    raise UserError(f"--channel_multiplier={_CHANNEL_MULTIPLIER.value} must be 1 or 2")
  stop_if_parse_only()
  if _TORCH.value:
    from l4f_jax.system.convert import import_torch  # pylint: disable=import-outside-toplevel
    try:
      import_torch("timing the PyTorch reference")
    except UserError as e:
      raise UserError(f"{e}; or pass --notorch to time JAX alone") from None
  if _XLA_FLAGS.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA_FLAGS.value).strip()
  args = Args(size, batch, _REPEATS.value, _CHANNEL_MULTIPLIER.value, _TORCH.value,
              tuple(int(n) for n in _TORCH_THREADS.value), config, name or "",
              _TORCH_DEVICE.value, _COMPUTE_DTYPE.value, tuple(_TORCH_MODCONV.value))
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {load()}", flush=True)
  for w in whats:
    for line in report(w, args, BENCHMARKS[w](args)):
      print(line, flush=True)


if __name__ == "__main__":
  cli.run(main)
