"""`ops.layers.conv2d`: the phase form with hand-written derivatives (CPU) against torch's conv2d
and its autograd, up to the second derivative the R1 penalty takes; and the compiled R1 program's
convolutions, which must stay in the forms XLA:CPU runs with its dense kernels."""
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l4f_jax.method.losses import r1_penalty
from l4f_jax.models.stylegan2 import Discriminator
from l4f_jax.ops.layers import AMX_MIN_CHANNELS, conv2d, conv_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (in size, kernel, stride, padding): every conv of G and D (3x3 same, 1x1, D's 3x3 / 1x1 stride 2
# after the blur, the transposed conv's 2x2 / 2x1 / 1x2 phases with full padding) and odd extras.
# The parity script sets GEMM_MAX_PIXELS = SMALL_GEMM_PIXELS (off by default, see ops/layers.py),
# so that both weight-gradient forms are checked: (12, 3, 1, 1) has 144 output pixels, more than
# that, and takes the per-tap form; the others the single patches GEMM. With WINOGRAD forced on
# (every channel count and size) it runs the 3x3 pad-1 stride-1 cases, whose forward and input
# gradients then are Winograd convs; 7 and 9 px are not multiples of the tiles (2, 4). With IM2COL
# forced on, every case's forward, input and weight gradients are the column-patches GEMMs.
SMALL_GEMM_PIXELS = 64
CASES = [(8, 3, 1, 1), (8, 1, 1, 0), (9, 3, 2, 0), (7, 1, 2, 0), (6, 2, 1, 1), (5, 1, 1, 0),
         (11, 4, 2, 1), (10, 3, 3, 0), (7, 2, 1, 0), (12, 3, 1, 1), (7, 3, 1, 1), (9, 3, 1, 1)]
WINOGRAD = dict(WINOGRAD_MIN_CHANNELS=1, WINOGRAD_BF16_MIN=1,
                WINOGRAD_BF16_MAX=10**9, WINOGRAD_MIN_PIXELS=1)
# float64 takes the column patches by default (IM2COL_FLOAT64_MIN_CHANNELS, the "im2col" set's
# form); every set turns that off, so that each float32 form (direct conv, per-tap and patches
# weight gradients, Winograd, column patches by the float32 rule) is checked in float64.
F64_DIRECT = dict(IM2COL_FLOAT64_MIN_CHANNELS=10**9)
RULES = {"small_gemm": (dict(F64_DIRECT, GEMM_MAX_PIXELS=SMALL_GEMM_PIXELS), "all"),
         "winograd2": (dict(F64_DIRECT, **WINOGRAD, WINOGRAD_TILE=2), "3x3"),
         "winograd4": (dict(F64_DIRECT, **WINOGRAD, WINOGRAD_TILE=4), "3x3"),
         "im2col": (dict(F64_DIRECT, IM2COL_MIN_CHANNELS=1), "all")}
IM2COL_BF16 = dict(IM2COL_BF16_MIN=1, IM2COL_BF16_MAX=10**9, IM2COL_BF16_DW_MIN=1)
IM2COL_OFF = dict(IM2COL_BF16_MIN=10**9, IM2COL_BF16_DW_MIN=10**9)  # bf16: it takes precedence

_SCRIPT = """
import sys
import jax, numpy as np, torch
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from torch.nn import functional as F
from l4f_jax.ops import layers
from l4f_jax.ops.layers import conv2d
from tests.test_conv import CASES, RULES


def jax_side(x, w, c, s, p):
  # JAX (phase form): y, dL/dx and dL/dw of L = sum(c * tanh(y)), and the R1-like second
  # derivative d/dw of sum((dL/dx)^2); one program per case.
  f = lambda x, w: jnp.sum(c * jnp.tanh(conv2d(x, w, s, p, impl="phases")))
  r1 = lambda x, w: jnp.sum(jax.grad(f)(x, w) ** 2)
  both = lambda x, w: (conv2d(x, w, s, p, impl="phases"), *jax.grad(f, argnums=(0, 1))(x, w),
                       *jax.grad(r1, argnums=(0, 1))(x, w))
  convs = str(jax.make_jaxpr(jax.grad(r1, argnums=(0, 1)))(x, w)).count("conv_general_dilated")
  return jax.jit(both)(x, w), convs


def torch_side(x, w, c, s, p):
  # torch (NCHW / OIHW) with autograd's double backward, back in NHWC / HWIO.
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  ty = F.conv2d(tx, tw, stride=s, padding=p)
  tc = torch.tensor(c.transpose(0, 3, 1, 2))
  tgx, tgw = torch.autograd.grad((tc * torch.tanh(ty)).sum(), (tx, tw), create_graph=True)
  thx, thw = torch.autograd.grad(tgx.pow(2).sum(), (tx, tw))
  nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)
  hwio = lambda t: t.detach().numpy().transpose(2, 3, 1, 0)
  return nhwc(ty), nhwc(tgx), hwio(tgw), nhwc(thx), hwio(thw)


report = {}
for rule in sys.argv[1:]:
  rules, which = RULES[rule]
  worst = report[rule] = dict(convs=0)
  with layers.conv_rules(**rules):  # read when conv2d is traced
    for h, k, s, p in [c for c in CASES if which == "all" or c[1:] == (3, 1, 1)]:
      rng = np.random.default_rng(h * 100 + k * 10 + s)
      x = rng.standard_normal((2, h, h, 3)); w = rng.standard_normal((k, k, 3, 4))
      c = rng.standard_normal((2, (h + 2 * p - k) // s + 1, (h + 2 * p - k) // s + 1, 4))
      got, convs = jax_side(x, w, c, s, p)
      worst["convs"] += convs
      for name, a, b in zip(("y", "gx", "gw", "hx", "hw"), got, torch_side(x, w, c, s, p)):
        assert a.shape == b.shape and a.dtype == np.float64, (name, a.shape, b.shape, a.dtype)
        rel = float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-30))
        worst[name] = max(worst.get(name, 0.0), rel)
print(report)
"""


@pytest.fixture(scope="module")
def float64_report():
  """{rule set: worst relative errors and the R1 program's conv count}, from one float64 process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(_SCRIPT), *sorted(RULES)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (a dict of floats we printed)


@pytest.mark.parametrize("rules", sorted(RULES))
def test_phase_conv_matches_torch_to_second_order_float64(rules, float64_report):
  """Forward, both gradients and the second derivative through the input gradient (what R1
  differentiates) agree with torch in float64 to <= 1e-12 relative, for strides 1, 2, 3; with
  Winograd forced on, the 3x3 same convs, and with im2col every case, whose programs then hold
  no convolution at all."""
  worst = dict(float64_report[rules])
  convs = worst.pop("convs")
  assert set(worst) == {"y", "gx", "gw", "hx", "hw"}
  assert max(worst.values()) < 1e-12, worst
  assert (convs == 0) == (rules != "small_gemm"), convs


@pytest.mark.parametrize("impl", ["phases", "xla"])
def test_phase_and_xla_forms_agree_float32(impl):
  """Both impls of a strided conv agree with one lax conv (float32, highest precision)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 17, 17, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 5))
  want = jax.lax.conv_general_dilated(x, w, (2, 2), ((0, 0), (0, 0)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv2d(x, w, 2, 0, impl=impl), want, atol=1e-5, rtol=0)


def _conv_forms(hlo_text: str) -> list[str]:
  """(dim_labels, window) of every convolution in an optimized HLO module."""
  out = []
  for line in hlo_text.splitlines():
    if " convolution(" in line:
      labels = re.search(r"dim_labels=(\S+?),?(\s|$)", line).group(1)
      window = re.search(r"window=\{([^}]*)\}", line)
      out.append((labels, window.group(1) if window else ""))
  return out


@pytest.mark.parametrize("rules,min_convs", [({}, 20), (WINOGRAD, 8)])
def test_r1_program_uses_only_dense_conv_forms(rules, min_convs):
  """The compiled R1 gradient of D (what made the 256 px R1 iteration 5x a plain one) holds only
  NHWC / HWIO / NHWC convolutions without window reversal, dilation or stride (on CPU); with
  Winograd forced on, the 3x3 same convs are GEMMs and the rest keeps those forms."""
  # 16 px: every kind of D layer (3x3 same, blurred 3x3 stride 2, 1x1 skip, the 4 px head).
  d = Discriminator(16, channel_base=256, channel_max=16)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params = d.init(jax.random.PRNGKey(1), x)["params"]
  loss = lambda p: r1_penalty(lambda y: d.apply({"params": p}, y), x)
  with conv_rules(**rules):
    lowered = jax.jit(jax.grad(loss)).lower(params)
  forms = _conv_forms(lowered.compile().as_text())
  n_3x3 = sum(1 for f in forms if "size=3x3" in f[1] and "pad=1_1x1_1" in f[1])
  assert len(forms) >= min_convs and (n_3x3 == 0) == bool(rules), (n_3x3, forms)
  bad = [f for f in forms if f[0] != "b01f_01io->b01f"
         or re.search(r"rhs_reversal|lhs_dilate|rhs_dilate|stride", f[1])]
  assert not bad, bad


def test_case_list_covers_both_weight_gradient_forms():
  sizes = [((h + 2 * p - k) // s + 1) ** 2 for h, k, s, p in CASES]
  assert min(sizes) <= SMALL_GEMM_PIXELS < max(sizes), sizes


def _bf16_loss(cot, pad, impl, dtype):
  """L(x, w) = sum(cot * tanh(conv(x, w))) in `dtype`, summed in float32."""
  return lambda x, w: jnp.sum(cot * jnp.tanh(conv2d(x.astype(dtype), w.astype(dtype), 1, pad,
                                                    impl=impl).astype(jnp.float32)))


def _assert_bf16_near_float32(x, w, cot, pad, rules):
  """The bf16 phase form (under `rules`): forward, both gradients and the R1-like second derivative
  within 8 bf16 roundings (u = 2^-8) of JAX's own derivatives of one float32 lax conv on the same
  bf16-rounded inputs, every result in bf16."""
  bf = jnp.bfloat16
  r1 = lambda f: (lambda x, w: jnp.sum(jax.grad(f)(x, w).astype(jnp.float32) ** 2))
  with conv_rules(**rules):
    got = dict(y=conv2d(x, w, 1, pad, impl="phases"),
               g=jax.grad(_bf16_loss(cot, pad, "phases", bf), (0, 1))(x, w),
               h=jax.grad(r1(_bf16_loss(cot, pad, "phases", bf)), (0, 1))(x, w))
  want = dict(y=conv2d(x.astype(jnp.float32), w.astype(jnp.float32), 1, pad, impl="xla"),
              g=jax.grad(_bf16_loss(cot, pad, "xla", jnp.float32), (0, 1))(x, w),
              h=jax.grad(r1(_bf16_loss(cot, pad, "xla", jnp.float32)), (0, 1))(x, w))
  for name in got:
    for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
      assert a.dtype == bf, (name, a.dtype)
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
      assert rel < 8 * 2.0 ** -8, (name, rel)


@pytest.mark.parametrize("form", ["amx", "winograd", "im2col"])
def test_bf16_gemm_path_to_second_order(form):
  """bfloat16 at AMX_MIN_CHANNELS channels: the bf16 GEMM forms with float32 accumulation ("amx"),
  with Winograd forced on, its float32 form on the bf16 inputs ("winograd"), or with im2col forced
  on, one column-patches GEMM per conv and weight gradient, its data moved as bits ("im2col"):
  forward, both gradients and the R1-like second derivative against JAX's own derivatives of one
  float32 lax conv on the same bf16-rounded inputs, within a few bf16 roundings (u = 2^-8); and
  the compiled forward is GEMMs (bf16 operands, float32 result; Winograd: float32, 36 = 6 x 6
  batched), no convolution."""
  c = AMX_MIN_CHANNELS
  bf = jnp.bfloat16
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, c)).astype(bf)
  w = (jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, c)) / (3 * c ** 0.5)).astype(bf)
  cot = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, c))
  rules = dict(amx=IM2COL_OFF, winograd=dict(IM2COL_OFF, **WINOGRAD, WINOGRAD_TILE=4),
               im2col=IM2COL_BF16)[form]
  _assert_bf16_near_float32(x, w, cot, 1, rules)
  with conv_rules(**rules):
    fwd = jax.jit(lambda x, w: conv2d(x, w, 1, 1, impl="phases")).lower(x, w)
  assert " convolution(" not in fwd.compile().as_text()
  bf16_gemms = re.findall(r"dot_general.*: \(tensor<\w+xbf16>, tensor<\w+xbf16>\) -> "
                          r"tensor<\w+xf32>", fwd.as_text())
  winograd_gemms = re.findall(r"dot_general.*batching_dims.*: \(tensor<36x\w+xf32>, tensor<36x\w+xf32>\) -> "
                              r"tensor<36x\w+xf32>", fwd.as_text())
  assert (len(bf16_gemms), len(winograd_gemms)) == dict(amx=(9, 0), winograd=(0, 1),
                                                        im2col=(1, 0))[form], \
      fwd.as_text()[-3000:]


@pytest.mark.parametrize("cin,cout", [(128, 3), (3, 128)])
def test_bf16_1x1_conv_with_128_channels_on_one_side_is_a_gemm(cin, cout):
  """bfloat16 1x1 convs with >= IM2COL_PHASE_MIN_CHANNELS channels on one side only (the ToRGB
  128 -> 3, D's FromRGB 3 -> 128; the default rules): forward, both gradients and the R1-like
  second derivative within a few bf16 roundings of JAX's derivatives of one float32 lax conv on the
  same bf16-rounded inputs, and the compiled forward and its gradient hold no convolution (XLA:CPU
  ran the bf16 ToRGB as a float32 conv at 2 GFLOP/s)."""
  bf = jnp.bfloat16
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, cin)).astype(bf)
  w = (jax.random.normal(jax.random.PRNGKey(1), (1, 1, cin, cout)) / cin ** 0.5).astype(bf)
  cot = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 6, cout))
  _assert_bf16_near_float32(x, w, cot, 0, {})
  for fn in (lambda x, w: conv2d(x, w, 1, 0, impl="phases"),
             jax.grad(_bf16_loss(cot, 0, "phases", bf), (0, 1))):
    assert " convolution(" not in jax.jit(fn).lower(x, w).compile().as_text()
