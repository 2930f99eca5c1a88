"""Primitive ops against independent references: upfirdn2d, modulated conv, torch-exact bicubic."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from l4f_jax.ops.layers import modulated_conv
from l4f_jax.ops.resize import bicubic_matrix, resize_bicubic_align_corners
from l4f_jax.ops.upfirdn2d import make_kernel, upfirdn2d
from l4f_jax.reference import torch_stylegan2 as ref
from l4f_jax.reference.numpy_upfirdn2d import upfirdn2d_np

K4 = make_kernel([1, 3, 3, 1])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


# (name, kernel, up, down, pad, input size): every use in StyleGAN2 (spec §1) plus extra cases.
UPFIRDN_CASES = [
    ("torgb_upsample", K4 * 4, 2, 1, (2, 1), 8),
    ("blur_after_upconv", K4 * 4, 1, 1, (1, 1), 17),
    ("d_blur_3x3_down", K4, 1, 1, (2, 2), 16),
    ("d_blur_1x1_skip", K4, 1, 1, (1, 1), 16),
    ("asymmetric_kernel", np.arange(1, 13, dtype=np.float32).reshape(3, 4) / 78, 2, 1, (2, 1), 7),
    ("negative_pad", K4, 1, 1, (-1, 2), 9),
    ("up_and_down", K4 * 4, 2, 2, (1, 2), 6),
    ("down_only", np.random.RandomState(3).rand(5, 5).astype(np.float32), 1, 2, (2, 2), 11),
]


@pytest.mark.parametrize("name,kernel,up,down,pad,hw", UPFIRDN_CASES,
                         ids=[c[0] for c in UPFIRDN_CASES])
def test_upfirdn2d_matches_numpy_reference(name, kernel, up, down, pad, hw):
  x = np.random.RandomState(0).randn(2, hw, hw + 1, 3).astype(np.float32)
  got = np.asarray(upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad))
  want = upfirdn2d_np(_nchw(x), kernel, up=up, down=down, pad=pad).transpose(0, 2, 3, 1)
  kh = kernel.shape[0]
  assert got.shape[1] == (hw * up + pad[0] + pad[1] - kh + down) // down
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,kernel,up,down,pad,hw", UPFIRDN_CASES[:4],
                         ids=[c[0] for c in UPFIRDN_CASES[:4]])
def test_upfirdn2d_bfloat16_is_rounded_once(name, kernel, up, down, pad, hw):
  """bf16 in, bf16 out, one rounding: every output within u = 2^-8 (bf16's unit roundoff) of the
  exact filter of the bf16 inputs. Rounding after each multiply-add (bf16 arithmetic) exceeds it."""
  x = jnp.asarray(np.random.RandomState(1).randn(2, hw, hw + 1, 8), jnp.bfloat16)
  got = np.asarray(upfirdn2d(x, kernel, up=up, down=down, pad=pad))
  assert got.dtype == jnp.bfloat16
  exact = upfirdn2d_np(_nchw(np.asarray(x, np.float64)), np.asarray(kernel, np.float64), up=up,
                       down=down, pad=pad).transpose(0, 2, 3, 1)
  err = np.abs(got.astype(np.float64) - exact)
  assert np.all(err <= 2.0 ** -8 * np.abs(exact) + 1e-30), (err / np.abs(exact)).max()


MODCONV_CASES = [  # (name, k, upsample, demodulate)
    ("plain", 3, False, True),
    ("upsample", 3, True, True),
    ("plain_nodemod", 3, False, False),
    ("upsample_nodemod", 3, True, False),
    ("torgb_1x1", 1, False, False),
]


def _modconv_inputs(k, dtype=np.float32, b=3, cin=6, cout=5, hw=7):
  rs = np.random.RandomState(1)
  x = rs.randn(b, hw, hw, cin).astype(dtype)
  w = (rs.randn(k, k, cin, cout) / np.sqrt(cin * k * k)).astype(dtype)
  s = (1 + 0.5 * rs.randn(b, cin)).astype(dtype)
  return x, w, s


@pytest.mark.parametrize("name,k,upsample,demodulate", MODCONV_CASES,
                         ids=[c[0] for c in MODCONV_CASES])
def test_fused_and_nonfused_modconv_agree(name, k, upsample, demodulate):
  x, w, s = _modconv_inputs(k)
  kw = dict(demodulate=demodulate, upsample=upsample, blur_kernel=(1, 3, 3, 1))
  a = np.asarray(modulated_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), fused=True, **kw))
  b = np.asarray(modulated_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), fused=False, **kw))
  assert a.shape == (3, 14 if upsample else 7, 14 if upsample else 7, 5)
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,k,upsample,demodulate", MODCONV_CASES,
                         ids=[c[0] for c in MODCONV_CASES])
def test_modconv_matches_torch_reference(name, k, upsample, demodulate):
  """Both JAX paths against the reference ModulatedConv2d (fused, grouped, conv_transpose2d)."""
  torch.manual_seed(0)
  m = ref.ModulatedConv2d(6, 5, k, style_dim=4, demodulate=demodulate, upsample=upsample)
  style = torch.randn(3, 4)
  x = torch.randn(3, 6, 7, 7)
  with torch.no_grad():
    want = m(x, style).numpy().transpose(0, 2, 3, 1)
    s = m.modulation(style).numpy()
  w = m.weight[0].detach().numpy().transpose(2, 3, 1, 0) * m.scale
  for fused in (True, False):
    got = modulated_conv(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), jnp.asarray(w),
                         jnp.asarray(s), demodulate=demodulate, upsample=upsample, fused=fused,
                         blur_kernel=(1, 3, 3, 1))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_fused_and_nonfused_modconv_agree_float64():
  """In float64 (jax x64, in a subprocess) the two formulations agree to ~1e-13."""
  script = textwrap.dedent("""
      import jax, numpy as np
      jax.config.update("jax_enable_x64", True)
      import jax.numpy as jnp
      from l4f_jax.ops.layers import modulated_conv
      from tests.test_ops import MODCONV_CASES, _modconv_inputs
      worst = 0.0
      for _, k, up, demod in MODCONV_CASES:
        x, w, s = (jnp.asarray(a) for a in _modconv_inputs(k, np.float64))
        kw = dict(demodulate=demod, upsample=up, blur_kernel=(1, 3, 3, 1))
        a = modulated_conv(x, w, s, fused=True, **kw)
        b = modulated_conv(x, w, s, fused=False, **kw)
        assert a.dtype == jnp.float64, a.dtype
        worst = max(worst, float(jnp.max(jnp.abs(a - b))))
      print(worst)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert float(out.stdout.strip().splitlines()[-1]) < 1e-12


BICUBIC_SIZES = [((4, 4), (8, 8)), ((8, 8), (16, 16)), ((5, 7), (13, 9)), ((16, 16), (7, 7)),
                 ((32, 32), (64, 64)), ((3, 3), (1, 1))]


@pytest.mark.parametrize("in_hw,out_hw", BICUBIC_SIZES)
def test_bicubic_matches_torch_interpolate(in_hw, out_hw):
  """float32 JAX vs torch: within 1e-6 of torch's float64 result (the exact function).

  torch's own float32 kernel rounds its coefficients and is up to ~7e-6 off its float64 result
  here, so the float32-vs-float32 comparison gets a 1e-5 bound.
  """
  x = np.random.RandomState(2).randn(2, 3, *in_hw).astype(np.float32)

  def torch_resize(a):
    out = F.interpolate(a, size=out_hw, mode="bicubic", align_corners=True)
    return out.numpy().astype(np.float64).transpose(0, 2, 3, 1)

  got = np.asarray(resize_bicubic_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)), out_hw))
  want64 = torch_resize(torch.from_numpy(x).double())
  assert got.shape == want64.shape
  np.testing.assert_allclose(got, want64, atol=1e-6, rtol=0)
  np.testing.assert_allclose(got, torch_resize(torch.from_numpy(x)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_in,n_out", [(4, 8), (5, 13), (16, 7), (128, 256), (2, 2)])
def test_bicubic_matrix_is_torch_exact(n_in, n_out):
  """The float64 interpolation matrix equals torch's float64 response to unit impulses."""
  eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2)
  resp = F.interpolate(eye, size=(n_out, 2), mode="bicubic", align_corners=True)
  want = resp[:, 0, :, 0].numpy().T  # [n_out, n_in]
  np.testing.assert_allclose(bicubic_matrix(n_in, n_out), want, atol=1e-12, rtol=0)
