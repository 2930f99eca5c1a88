"""Smoke tests of experiments.benchmark (no timing assertions) and its analytic FLOP counts."""
import os
import sys

import pytest

from tests import cli_runner
from tests.tiny_world import ROOT, cli_env


def test_generator_macs_match_published_constants():
  """The conv-counted G MACs equal the published 256/1024 px config-f constants (the StyleGAN2 paper's config-f cost figures)."""
  from l4f_jax.system.flops import CONFIGS, discriminator_macs, generator_macs
  assert generator_macs(CONFIGS["gpu256"]) == 45124673536
  assert generator_macs(CONFIGS["gpu1024"]) == 74266894336
  assert 46e9 < discriminator_macs(CONFIGS["gpu256"]) < 48e9  # ≈47 GMAC


def test_iteration_flops_match_spec_estimate():
  """Per image, before R1: ≈1.2 TFLOP at 256 px and ≈2 at 1024 (a rough estimate
  that also counts blurs, which the analytic count leaves out: so within 15 % below it)."""
  from l4f_jax.system.flops import CONFIGS, iteration_flops
  for name, spec in (("gpu256", 1.2e12), ("gpu1024", 2.0e12)):
    c = CONFIGS[name]
    per_image = iteration_flops(c, do_r1=False) / c.batch
    assert 0.85 * spec < per_image <= spec, (name, per_image)
    assert iteration_flops(c, do_r1=True) > iteration_flops(c, do_r1=False)


def test_iteration_tiny_runs_and_prints_ratio():
  proc = cli_runner.run(
      [sys.executable, "-m", "experiments.benchmark", "--what=iteration", "--config=tiny",
       "--repeats=1", "--torch_threads=1", "--torch_modconv=fused,nonfused_depthwise"],
      cwd=ROOT, env=cli_env(devices=1), timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = proc.stdout
  assert "iteration: config tiny" in out and "emulated devices" in out, out
  assert "it/s" in out and "official_iteration" in out, out
  assert "FLOPs per iteration (amortised)" in out and "analytic" in out, out
  assert "ratio jax/torch time:" in out, out
  assert "of this run's XLA float32 matmul [2048]^3 at" in out, out  # the measured roofline
  assert "official_iteration, fused" in out and "official_iteration, nonfused_depthwise" in out, out
  assert "official_iteration, nonfused)" not in out, out


@pytest.mark.parametrize("flag,message", [("--what=nope", "--what=nope is unknown"),
                                          ("--config=nope", "--config=nope is unknown"),
                                          ("--torch_threads=x", "--torch_threads")])
def test_bad_flags_exit_with_one_line(flag, message):
  proc = cli_runner.run([sys.executable, "-m", "experiments.benchmark", flag], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("benchmark: error:")]
  assert len(lines) == 1 and message in lines[0], proc.stderr


def test_cpu_peaks_from_cpuinfo(tmp_path):
  """float32: cores x 2 FMA x 16 lanes (AVX-512) x 2 x clock; bf16 with AMX: cores x 1024 x clock;
  no AVX-512, or AMD before Zen 5: 8 lanes; AVX512_BF16 without AMX: twice float32; no clock:
  None."""
  from l4f_jax.system.flops import cpu_peak_gflops
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
  assert cpu_peak_gflops("float32", str(info), cores=4)[0] == 4 * 2 * 16 * 2 * 2.0
  assert cpu_peak_gflops("bfloat16", str(info), cores=4)[0] == 4 * 1024 * 2.0
  info.write_text("cpu MHz\t\t: 3000.000\nflags\t\t: fpu avx2\n")
  assert cpu_peak_gflops("float32", str(info), cores=2)[0] == 2 * 2 * 8 * 2 * 3.0
  assert cpu_peak_gflops("bfloat16", str(info), cores=2)[0] == 2 * 2 * 8 * 2 * 3.0
  # AMD Zen 4 (family 25): AVX-512 on 256-bit FMA units; bf16 dot products at twice float32
  info.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 25\ncpu MHz\t\t: 2500.000\n"
                  "flags\t\t: fpu avx2 avx512f avx512_bf16\n")
  assert cpu_peak_gflops("float32", str(info), cores=2)[0] == 2 * 2 * 8 * 2 * 2.5
  assert cpu_peak_gflops("bfloat16", str(info), cores=2)[0] == 2 * 2 * 8 * 4 * 2.5
  info.write_text(info.read_text().replace("family\t: 25", "family\t: 26"))  # Zen 5: 512-bit FMAs
  assert cpu_peak_gflops("float32", str(info), cores=2)[0] == 2 * 2 * 16 * 2 * 2.5
  info.write_text("flags\t\t: avx512f\n")
  assert cpu_peak_gflops("float32", str(info)) is None
  assert cpu_peak_gflops("float32", str(tmp_path / "missing")) is None


def test_iteration_jax_variants_are_traced_with_their_conv_rules():
  """--jax_variants: one line per variant, each program traced with its rules (Winograd forced on
  changes the XLA FLOP count of the plain iteration; the default rules give the default count)."""
  proc = cli_runner.run(
      [sys.executable, "-m", "experiments.benchmark", "--what=iteration", "--config=tiny",
       "--repeats=1", "--notorch", "--nor1", "--jax_variants=float32,float32+WINOGRAD_MIN_CHANNELS"
       "=0+WINOGRAD_MIN_PIXELS=0+WINOGRAD_TILE=2"],
      cwd=ROOT, env=cli_env(devices=1), timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("  jax ")]
  assert len(lines) == 2 and "WINOGRAD_TILE=2" in lines[1] and "WINOGRAD" not in lines[0], lines
  counts = [float(l.split("this program's XLA count ")[1].split()[0]) for l in lines]
  assert counts[0] != counts[1] and all(c > 0 for c in counts), counts
  assert all("[plain " in l and "R1" not in l for l in lines), lines
  assert "FLOPs per plain iteration: " in proc.stdout, proc.stdout
