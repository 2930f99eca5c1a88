"""Model sizes and FLOP accounting: the benchmark configurations, analytic MACs of the StyleGAN2
generator and discriminator, the FLOPs of one Labels4Free iteration, and accelerator peaks.

The counts are 2 x the multiply-accumulates of the convolutions and linears (blurs, noise and
activations are left out); backward = 2 x forward. For config-f at 256 and 1024 px the generator
count equals the published constants (the StyleGAN2 paper's config-f cost figures), which `tests/test_benchmark.py` checks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from l4f_jax.models.stylegan2 import channel_table


@dataclasses.dataclass(frozen=True)
class Config:
  """A generator/discriminator size and the iteration's batch split over `devices`."""
  size: int
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 2
  channel_base: Optional[int] = None
  channel_max: int = 512
  batch: int = 8
  devices: int = 4

  def arch(self) -> dict:
    return dict(channel_multiplier=self.channel_multiplier, channel_base=self.channel_base,
                channel_max=self.channel_max)


CONFIGS = {
    "tiny": Config(32, 16, 2, channel_base=256, channel_max=16, batch=4, devices=2),
    "cpu": Config(64, 128, 2, channel_base=1024, channel_max=64),
    "cpu_wide": Config(64, 512, 8, channel_base=16384, channel_max=256),
    "gpu256": Config(256),
    "gpu512": Config(512),
    "gpu1024": Config(1024),
}


def generator_macs(c: Config) -> float:
  """MACs of one G forward (one image): mapping, modulations, convs (up-conv at input resolution)."""
  ch = channel_table(c.size, c.channel_multiplier, c.channel_base, c.channel_max)
  s = c.style_dim
  macs = c.n_mlp * s * s
  macs += s * ch[4] * 2 + 9 * ch[4] * ch[4] * 16 + ch[4] * 3 * 16  # conv1, to_rgb1
  for i in range(3, int(math.log2(c.size)) + 1):
    r, cin, cout = 2 ** i, ch[2 ** (i - 1)], ch[2 ** i]
    macs += s * (cin + 2 * cout)                                     # modulations
    macs += 9 * cin * cout * (r // 2) ** 2 + 9 * cout * cout * r * r + 3 * cout * r * r
  return float(macs)


def discriminator_macs(c: Config) -> float:
  """MACs of one D forward (one image)."""
  ch = channel_table(c.size, c.channel_multiplier, c.channel_base, c.channel_max)
  macs = 3 * ch[c.size] * c.size ** 2
  for i in range(int(math.log2(c.size)), 2, -1):
    r, cin, cout = 2 ** i, ch[2 ** i], ch[2 ** (i - 1)]
    macs += 9 * cin * cin * r * r + 9 * cin * cout * (r // 2) ** 2 + cin * cout * (r // 2) ** 2
  macs += 9 * (ch[4] + 1) * ch[4] * 16 + 16 * ch[4] * ch[4] + ch[4]
  return float(macs)


def iteration_flops(c: Config, do_r1: bool) -> float:
  """Analytic FLOPs of one iteration on batch B: 4B G forwards (fg, bg of the D and A steps);
  D step: forward + backward (2x) on 2B; A step: D forward + input backward on B (A is negligible);
  R1: forward + input backward on B, then the backward of both (2x): 6 D forwards per image."""
  g, d, b = generator_macs(c), discriminator_macs(c), c.batch
  macs = 4 * b * g + 3 * 2 * b * d + 2 * b * d + (6 * b * d if do_r1 else 0)
  return 2.0 * macs


# Dense peak TFLOP/s per accelerator (bf16 tensor cores; float32 runs as TF32 at JAX's default
# precision on these GPUs). H200 has the H100 SXM compute.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 495.0},
               "H200": {"bfloat16": 989.0, "float32": 495.0},
               "A100": {"bfloat16": 312.0, "float32": 156.0}}


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind.upper():
      return peaks[dtype]
  return None


# x86 CPU peaks, derived from the CPU's vendor, family, flags and clock (Linux /proc/cpuinfo; the
# clock is the one it reports, which boost clocks may exceed):
#   float32: cores x 2 FMA units x SIMD lanes x 2 FLOP per FMA x clock. Lanes: 16 with AVX-512 on
#            Intel (two 512-bit FMA units: Xeon Scalable Gold / Platinum and later); 8 with AVX2,
#            and on AMD before Zen 5 (family < 26), whose FMA units are 256 bits wide and run
#            AVX-512 in two halves (AMD's Zen 4 software optimization guide, 57647);
#   bfloat16 with AMX-BF16: cores x 1024 FLOP per cycle (Intel's figure for the AMX TMUL unit:
#            1,024 bf16 operations per cycle per core, Sapphire Rapids) x clock;
#   bfloat16 with AVX512_BF16 and no AMX: twice float32 (VDPBF16PS: two products per float32 lane
#            and FMA unit per cycle).
AMX_BF16_FLOP_PER_CYCLE = 1024


def cpu_peak_gflops(dtype: str, cpuinfo: str = "/proc/cpuinfo",
                    cores: Optional[int] = None) -> Optional[tuple[float, str]]:
  """(peak GFLOP/s, its derivation) of this CPU for `dtype`, or None where it cannot be derived."""
  import os  # noqa: PLC0415
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return None
  fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  try:
    ghz = float(fields["cpu MHz"]) / 1e3
  except (KeyError, ValueError):
    return None
  flags = set(fields.get("flags", "").split())
  n = cores or len(os.sched_getaffinity(0))
  if dtype == "bfloat16" and "amx_bf16" in flags:
    return (n * AMX_BF16_FLOP_PER_CYCLE * ghz,
            f"{n} cores x {AMX_BF16_FLOP_PER_CYCLE} bf16 FLOP/cycle (AMX) x {ghz:.2f} GHz")
  amd_halves = (fields.get("vendor_id") == "AuthenticAMD"
                and fields.get("cpu family", "0").isdigit() and int(fields["cpu family"]) < 26)
  lanes = (8 if amd_halves else 16) if "avx512f" in flags else 8 if "avx2" in flags else None
  if lanes is None:
    return None
  if dtype == "bfloat16" and "avx512_bf16" in flags:
    return (n * 2 * lanes * 4 * ghz,
            f"{n} cores x 2 FMA x {lanes} lanes x 2 bf16 products x 2 x {ghz:.2f} GHz (AVX512_BF16)")
  return (n * 2 * lanes * 2 * ghz,
          f"{n} cores x 2 FMA x {lanes} lanes x 2 x {ghz:.2f} GHz float32")
