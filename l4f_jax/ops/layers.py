"""StyleGAN2 layers with rosinality's names and semantics, NHWC / HWIO.

Every module keeps its parameters in the Flax params tree, stored exactly as rosinality stores them
(N(0,1) weights, runtime equalized-LR scaling), so converted PyTorch weights load by a layout change only.
Module and parameter names follow rosinality's state_dict keys: `conv.modulation.weight` lives at
params['conv']['modulation']['weight'].
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from l4f_jax.ops.upfirdn2d import make_kernel, upfirdn2d

SQRT2 = math.sqrt(2.0)
_DN = ("NHWC", "HWIO", "NHWC")


def _torch_normal(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, shape, dtype)


def _cast(x, dtype):
  return x if dtype is None else x.astype(dtype)


def fused_leaky_relu(x, bias=None, negative_slope: float = 0.2, scale: float = SQRT2):
  """rosinality `fused_leaky_relu`: lrelu(x + bias, 0.2) * sqrt(2); bias broadcasts on channels."""
  if bias is not None:
    x = x + bias.astype(x.dtype)
  return jnp.where(x >= 0, x, x * negative_slope) * scale


def pixel_norm(x, eps: float = 1e-8):
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class PixelNorm(nn.Module):

  @nn.compact
  def __call__(self, x):
    return pixel_norm(x)


class EqualLinear(nn.Module):
  """rosinality EqualLinear: weight [in, out] ~ N(0,1)/lr_mul, runtime scale lr_mul/sqrt(in)."""
  features: int
  use_bias: bool = True
  bias_init: float = 0.0
  lr_mul: float = 1.0
  activation: Optional[str] = None  # None or "fused_lrelu"
  dtype: Any = None  # compute dtype (e.g. bfloat16); None = the input's dtype

  @nn.compact
  def __call__(self, x):
    in_dim = x.shape[-1]
    w = self.param("weight", lambda k, s: _torch_normal(k, s) / self.lr_mul, (in_dim, self.features))
    scale = (1.0 / math.sqrt(in_dim)) * self.lr_mul
    y = jnp.dot(_cast(x, self.dtype), _cast(w * scale, self.dtype))
    b = None
    if self.use_bias:
      b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,)) * self.lr_mul
    if self.activation == "fused_lrelu":
      return fused_leaky_relu(y, b)
    if self.activation is not None:
      raise ValueError(f"unknown activation {self.activation!r}")
    return y if b is None else y + b.astype(y.dtype)


class EqualConv2d(nn.Module):
  """rosinality EqualConv2d: weight HWIO ~ N(0,1), runtime scale 1/sqrt(in*k*k)."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = None  # compute dtype (e.g. bfloat16); None = the input's dtype

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    w = self.param("weight", _torch_normal, (k, k, cin, self.features))
    scale = 1.0 / math.sqrt(cin * k * k)
    y = conv2d(_cast(x, self.dtype), (w * scale).astype(self.dtype or x.dtype), self.stride,
               self.padding)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y


def _conv_nhwc(x, weight, pads):
  return lax.conv_general_dilated(x, weight, (1, 1), pads, dimension_numbers=_DN)


def varying_axes(x) -> frozenset:
  """The shard_map mesh axes along which x varies (its type's `vma`; empty outside shard_map).
  JAX 0.10 keeps them in `manual_axis_type.varying`, earlier releases in `vma`."""
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", None) or ())


# Shape rules of conv2d_s1's GEMM forms, from micro-benchmarks at the 256 px config-f and built-in
# world shapes on a 2-core Sapphire Rapids (docs/benchmarks.md "Conv forms"):
# - bfloat16 with both channel counts >= AMX_MIN_CHANNELS runs forward, input gradient and weight
#   gradient as bf16 GEMMs with float32 accumulation, which XLA:CPU maps onto the AMX tiles (up to
#   2x the float32 conv at 512 channels); below it the GEMMs are memory-bound and XLA's conv wins.
# - a weight gradient over <= GEMM_MAX_PIXELS output pixels runs as one patches^T x dy GEMM; above
#   it as one GEMM per tap. Off (0) by default: at 64 (the 8 px and 4 px layers, 1.3-3.5x the
#   per-tap form alone) the 256 px config-f iteration did not change (13.44 s against 13.42 s),
#   while the changed float32 summation order moved the main command's figures (A 0.9683 ->
#   0.9673). tests/test_conv.py checks the form to second order in float64 with it set to 64.
# - a 3x3 conv with pads 1 whose output has >= WINOGRAD_MIN_PIXELS pixels and whose channels in and
#   out are >= WINOGRAD_MIN_CHANNELS (float32), or within WINOGRAD_BF16_MIN ..
#   WINOGRAD_BF16_MAX (bfloat16), runs as Winograd F(m x m, 3 x 3), m = WINOGRAD_TILE
#   (`_winograd_conv`), in float32. bfloat16, on at 128 and 256 channels: the 256 px config-f plain
#   iteration 21.5 s -> 15.5 s (and 31.4 -> 24.8 s in a more loaded run), replacing XLA's bf16
#   conv at 128 channels and the AMX GEMMs at 256 (at 512 the AMX GEMMs win). float32: off (10**9);
#   it won 1.3-1.9x at 64 px x 512 and 128 px x 256 channels op by op, but the iteration went
#   from 14.9 s to 18.5 s on the least loaded machine (its transforms are memory-bound), 27.3 ->
#   22.8 s and 26.9 -> 26.3 s on loaded ones. F(4 x 4) float32 error 1-2e-5 relative (F(2 x 2) and
#   the direct conv 1e-6); the built-in world's <= 64-channel convs never take it.
# - im2col (`_im2col_conv`, `_im2col_weight_grad`), taking precedence over the forms above:
#   bfloat16 convs with channels in and out within IM2COL_BF16_MIN .. IM2COL_BF16_MAX (forward and
#   input gradient) and weight gradients with both >= IM2COL_BF16_DW_MIN run as one bf16 GEMM of
#   the column patches (K = kw*Cin, N = kh*Cout; the row shifts fused into the output sum), float32
#   accumulation (AMX), the patches moved as uint16 bits. On at >= 128 channels (every 256 px
#   config-f conv but the 1x1 ToRGB): the 256 px config-f bf16 plain iteration 32.4 s -> 21.1 s at
#   load 3.3-4.8 (weight gradients alone 28.1 s; docs/benchmarks.md "im2col"); it replaces
#   Winograd at 128 and 256 channels and the AMX tap GEMMs at 512. Float32 and float64:
#   IM2COL_MIN_CHANNELS (forward, input and weight gradients), off (10**9), on only in tests;
#   IM2COL_DW_MIN_CHANNELS (weight gradients alone), on at >= 128 channels: its 3 column-shifted
#   copies replace the 9 per-tap slices, which XLA copies before each tap's GEMM (3.4 s of the
#   20.9 s float32 plain iteration at 256 px config-f on a 2-core AMD Zen 4); that iteration
#   20.2 s -> 17.4 s there (docs/benchmarks.md "AMD Zen 4"); IM2COL_PHASE_MIN_CHANNELS (kernels
#   smaller than 3 x 3: the 2x2, 2x1 and 1x2 phases of `conv2d`'s stride-2 convs and of
#   `conv_transpose_stride2`, and 1x1 convs, with >= 128 channels in or out), on: XLA's conv ran
#   D's 2x2 phase at 256 px at 21 GFLOP/s there (0.8 s a call), the 1x1 ToRGB at 2; the iteration
#   17.9 s -> 16.9 s; in bfloat16 too, where the 1x1 ToRGB (128 -> 3, bf16 inputs) ran as XLA's
#   float32 conv at 2 GFLOP/s (0.18 s of the 11 s plain iteration). The built-in world's
#   <= 64-channel convs never take either.
AMX_MIN_CHANNELS = 256
GEMM_MAX_PIXELS = 0
WINOGRAD_MIN_CHANNELS = 10**9
WINOGRAD_MIN_PIXELS = 64 * 64
WINOGRAD_TILE = 4
WINOGRAD_BF16_MIN = 128
WINOGRAD_BF16_MAX = 256
IM2COL_MIN_CHANNELS = 10**9
IM2COL_DW_MIN_CHANNELS = 128
IM2COL_PHASE_MIN_CHANNELS = 128
IM2COL_BF16_MIN = 128
IM2COL_BF16_MAX = 10**9
IM2COL_BF16_DW_MIN = 128
# float64 (the parity tests' programs): every conv, input and weight gradient as column patches.
# XLA:CPU runs float64 convolutions in a generic loop: the 256 px float64 method-parity case spent
# 13.9 s of its 2 iterations in them; with this rule its JAX side took 16.8 s instead of 22.8 s
# (tests/test_method_parity.py; forms checked to second order in float64 by tests/test_conv.py).
IM2COL_FLOAT64_MIN_CHANNELS = 1
# The names of the shape rules above: `conv_rules` overrides them while a program is traced (the
# benchmark's --jax_variants times such variants side by side; tests force a form on at small shapes).
CONV_RULES = ("AMX_MIN_CHANNELS", "GEMM_MAX_PIXELS", "WINOGRAD_MIN_CHANNELS",
              "WINOGRAD_MIN_PIXELS", "WINOGRAD_TILE", "WINOGRAD_BF16_MIN",
              "WINOGRAD_BF16_MAX", "IM2COL_MIN_CHANNELS", "IM2COL_DW_MIN_CHANNELS",
              "IM2COL_PHASE_MIN_CHANNELS", "IM2COL_BF16_MIN", "IM2COL_BF16_MAX",
              "IM2COL_BF16_DW_MIN", "IM2COL_FLOAT64_MIN_CHANNELS")


def conv_rule_error(name: str, value: int) -> Optional[str]:
  """Why `name = value` is not a valid conv rule setting, or None."""
  if name not in CONV_RULES:
    similar = [r for r in CONV_RULES if r.startswith(name.split("_")[0] + "_")]
    similar = similar or difflib.get_close_matches(name, CONV_RULES)
    return (f"{name!r} is not a conv rule (" + (f"similar: {', '.join(similar[:3])}; "
                                                if similar else "") +
            "all: l4f_jax.ops.layers.CONV_RULES)")
  if name == "WINOGRAD_TILE" and value not in _WINOGRAD:
    return f"WINOGRAD_TILE={value} must be one of {sorted(_WINOGRAD)}"
  return None


@contextlib.contextmanager
def conv_rules(**overrides: int):
  """Sets conv2d_s1's shape rules (CONV_RULES) for the programs traced inside; restores them after.
  The rules are read when conv2d is traced, so a program keeps the forms it was traced with."""
  for name, value in overrides.items():
    if conv_rule_error(name, value):
      raise ValueError(conv_rule_error(name, value))
  saved = {k: globals()[k] for k in overrides}
  globals().update(overrides)
  try:
    yield
  finally:
    globals().update(saved)


def _acc(dtype):
  """The accumulation dtype of a GEMM form: float32 for bfloat16 (and float32), float64 stays."""
  return jnp.promote_types(dtype, jnp.float32)


def _amx(x, weight) -> bool:
  return x.dtype == jnp.bfloat16 and min(x.shape[-1], weight.shape[-1]) >= AMX_MIN_CHANNELS


def _tap_gemm_conv(x, weight, pads):
  """The conv as a sum of kh*kw shifted GEMMs [B*H*W, Cin] x [Cin, Cout], accumulated in float32
  (`preferred_element_type`) and rounded to x's dtype once at the end."""
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  kh, kw, cin, cout = weight.shape
  ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  y = None
  for i in range(kh):
    for j in range(kw):
      t = lax.dot_general(xp[:, i:i + ho, j:j + wo].reshape(-1, cin), weight[i, j],
                          (((1,), (0,)), ((), ())), preferred_element_type=_acc(x.dtype))
      y = t if y is None else y + t
  return y.reshape(x.shape[0], ho, wo, cout).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _moved(f, x):
  """f(x) for a data movement f (pads, slices, concatenations, transposes) of bfloat16 x, moved as
  uint16 bits: XLA:CPU moves bf16 data through float32 copies. Its derivatives are f's own."""
  return lax.bitcast_convert_type(f(lax.bitcast_convert_type(x, jnp.uint16)), x.dtype)


def _moved_fwd(f, x):
  return _moved(f, x), x


def _moved_bwd(f, x, g):
  return jax.vjp(f, x)[1](g)


_moved.defvjp(_moved_fwd, _moved_bwd)


def _move(f, x):
  return _moved(f, x) if x.dtype == jnp.bfloat16 else f(x)


def _im2col(x, weight, weight_grad: bool = False) -> bool:
  channels = min(x.shape[-1], weight.shape[-1])
  if x.dtype == jnp.float64 and channels >= IM2COL_FLOAT64_MIN_CHANNELS:
    return True
  phase = not weight_grad and weight.shape[0] * weight.shape[1] < 9  # 2x2, 2x1, 1x2 phases; 1x1
  if phase and max(x.shape[-1], weight.shape[-1]) >= IM2COL_PHASE_MIN_CHANNELS:
    return True
  if x.dtype != jnp.bfloat16:
    if weight_grad:
      return channels >= min(IM2COL_MIN_CHANNELS, IM2COL_DW_MIN_CHANNELS)
    return channels >= IM2COL_MIN_CHANNELS
  if weight_grad:
    return channels >= IM2COL_BF16_DW_MIN
  return IM2COL_BF16_MIN <= channels <= IM2COL_BF16_MAX


def _column_patches(xp, kw, wo):
  """[B, H, wo, kw*Cin]: the kw column-shifted copies of the padded input side by side (taps j,
  channels c: the order of an HWIO kernel row)."""
  return _move(lambda v: jnp.concatenate([v[:, :, j:j + wo] for j in range(kw)], axis=-1), xp)


def _im2col_conv(x, weight, pads):
  """The conv as one GEMM [B*(ho + kh - 1)*wo, kw*Cin] x [kw*Cin, kh*Cout] of the column patches
  with the kernel rows side by side, accumulated in float32; output row h sums kernel row i's
  block at patch row h + i, and is rounded once. K = kw*Cin and N = kh*Cout instead of Cin and
  Cout per tap: fewer, larger GEMMs, and the row shifts fuse into the final sum."""
  kh, kw, cin, cout = weight.shape
  xp = _move(lambda v: jnp.pad(v, ((0, 0),) + tuple(pads) + ((0, 0),)), x)
  ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  p = _column_patches(xp, kw, wo)
  wn = jnp.transpose(weight, (1, 2, 0, 3)).reshape(kw * cin, kh * cout)
  y = lax.dot_general(p.reshape(-1, kw * cin), wn, (((1,), (0,)), ((), ())),
                      preferred_element_type=_acc(x.dtype)).reshape(p.shape[:3] + (kh, cout))
  return sum(y[:, i:i + ho, :, i] for i in range(kh)).astype(x.dtype)


def _im2col_weight_grad(xp, dy, kh, kw):
  """dw of `_im2col_conv`: one GEMM over the B*H*wo patch rows of dy shifted down by each kernel
  row i with the column patches.

  bfloat16: [kh*Cout, B*H*wo] x [B*H*wo, kw*Cin], dy channel-first (row-major operands, XLA:CPU's
  fast bf16 GEMM). float32 and float64: the shifted copies of dy side by side on the channel axis,
  [B*H*wo, kh*Cout], contracted with the patches over their rows: XLA fuses dy's producers (the
  activation's derivative, the sums of the GEMM blocks) into the copy, and into a transposing copy
  it ran them at 57 ns an element (1.45 s for one 256-channel layer of the 256 px R1 program)."""
  cin, (b, ho, wo, cout) = xp.shape[-1], dy.shape
  hp = ho + kh - 1
  if dy.dtype != jnp.bfloat16:
    dys = jnp.concatenate([jnp.pad(dy, ((0, 0), (i, kh - 1 - i), (0, 0), (0, 0)))
                           for i in range(kh)], axis=-1).reshape(-1, kh * cout)
    p = _column_patches(xp, kw, wo).reshape(-1, kw * cin)
    dw = lax.dot_general(p, dys, (((0,), (0,)), ((), ())), preferred_element_type=_acc(dy.dtype))
    return jnp.transpose(dw.reshape(kw, cin, kh, cout), (2, 0, 1, 3))
  dyt = _move(lambda v: jnp.concatenate(
      [jnp.pad(jnp.transpose(v, (3, 0, 1, 2)), ((0, 0), (0, 0), (i, kh - 1 - i), (0, 0)))
       for i in range(kh)]).reshape(kh * cout, b * hp * wo), dy)
  p = _column_patches(xp, kw, wo).reshape(-1, kw * cin)
  dw = lax.dot_general(dyt, p, (((1,), (0,)), ((), ())), preferred_element_type=_acc(dy.dtype))
  return jnp.transpose(dw.reshape(kh, cout, kw, cin), (0, 2, 3, 1))


# Winograd F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
# CVPR 2016, arXiv:1509.09308): {m: (B^T, G, A^T)} from the interpolation points 0, +-1, (+-2,) inf;
# per (m + 2)^2 input tile d, the m x m output tile is A^T [(G w G^T) * (B^T d B)] A.
_WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]])),
}


def _winograd(x, weight, pads) -> bool:
  channels = min(x.shape[-1], weight.shape[-1])
  if x.dtype == jnp.bfloat16:
    channels_ok = WINOGRAD_BF16_MIN <= channels <= WINOGRAD_BF16_MAX
  else:
    channels_ok = channels >= WINOGRAD_MIN_CHANNELS
  return (weight.shape[:2] == (3, 3) and tuple(map(tuple, pads)) == ((1, 1), (1, 1))
          and channels_ok and x.shape[1] * x.shape[2] >= WINOGRAD_MIN_PIXELS)


def _winograd_conv(x, weight):
  """The 3x3 pad-1 conv as Winograd F(m x m, 3 x 3), m = WINOGRAD_TILE, in float32 (float64 stays):
  the overlapping (m + 2)^2 input tiles stacked on a leading tile axis and transformed by one small
  matmul with B^T (x) B^T, (m + 2)^2 batched GEMMs [tiles, Cin] x [Cin, Cout] with the transformed
  kernel, and the output transform, one matmul with A^T (x) A^T; 2.25x (m = 2) or 4x (m = 4) fewer
  multiplies than the direct conv. H and W are padded up to multiples of m."""
  bt, g, at = _WINOGRAD[WINOGRAD_TILE]
  m, n = at.shape
  b, h, w, cin = x.shape
  th, tw, acc = -(-h // m), -(-w // m), _acc(x.dtype)
  xp = jnp.pad(x.astype(acc), ((0, 0), (1, 1 + th * m - h), (1, 1 + tw * m - w), (0, 0)))
  d = jnp.stack([xp[:, i:i + m * th:m, j:j + m * tw:m] for i in range(n) for j in range(n)])
  v = jnp.dot(np.kron(bt, bt).astype(acc), d.reshape(n * n, -1)).reshape(n * n, -1, cin)
  u = jnp.einsum("ai,ijco,bj->abco", g.astype(acc), weight.astype(acc), g.astype(acc))
  y = lax.dot_general(v, u.reshape(n * n, cin, -1), (((2,), (1,)), ((0,), (0,))))
  y = jnp.dot(np.kron(at, at).astype(acc), y.reshape(n * n, -1)).reshape(m, m, b, th, tw, -1)
  y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(b, th * m, tw * m, -1)
  return y[:, :h, :w].astype(x.dtype)


def _conv_s1(x, weight, pads):
  if _im2col(x, weight):
    return _im2col_conv(x, weight.astype(x.dtype), pads)
  if _winograd(x, weight, pads):
    return _winograd_conv(x, weight)
  if _amx(x, weight):
    return _tap_gemm_conv(x, weight.astype(x.dtype), pads)
  return _conv_nhwc(x, weight, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_s1(x, weight, pads=((0, 0), (0, 0))):
  """Stride-1 NHWC / HWIO convolution (cross-correlation) with static pads ((t, b), (l, r)), whose
  derivatives are written out in forms XLA:CPU runs at full speed.

  The input gradient is this same function (NHWC, HWIO, no window reversal) correlating dy with the
  flipped, io-swapped kernel; the weight gradient is a GEMM (`_weight_grad`). JAX's own transpose
  rules give the second derivative (the R1 penalty's gradient) convolutions with reversed windows
  and batch-last layouts, which XLA:CPU cannot hand to its Eigen kernels and runs in a naive loop
  (256 px config-f D: the R1 program ran at 7.6 GFLOP/s per core, the forward pass at 55). The
  values are the same up to summation order (tests/test_conv.py, float64).

  bfloat16 (`--compute_dtype=bfloat16`) with >= AMX_MIN_CHANNELS channels in and out (where the
  im2col rules below are set off; they take precedence): the forward
  and input gradient run as kh*kw bf16 GEMMs and the weight gradient as one, all accumulating in
  float32 (`preferred_element_type`), XLA:CPU's AMX path; each result is rounded to bfloat16 once.
  Where the precision lives in a bf16 step: the GEMM/conv accumulations and the demodulation
  statistics in float32 (`modulated_conv`), the activations between layers in bfloat16; losses, the
  R1 penalty and its gradient's reductions, the parameters and the Adam state in float32 (the
  parameters are cast to bf16 at each use, and their bf16 cotangents back to float32).

  Likewise, where im2col is set off, bfloat16 3x3 pad-1 convs with 128 or 256 channels and >= 64 x
  64 output pixels run as float32 Winograd F(4x4, 3x3) on the bf16 inputs, rounded to bf16 once.

  bfloat16 with >= 128 channels in and out (IM2COL_BF16_*, the default): forward, input gradient
  and weight gradient as one bf16 GEMM each of the column patches (`_im2col_conv`), float32
  accumulation, rounded to bf16 once; the patches are exact copies of the bf16 inputs (moved as
  bits), so the precision is that of the per-tap forms.
  """
  return _conv_s1(x, weight, pads)


def _conv2d_s1_fwd(x, weight, pads):
  return _conv_s1(x, weight, pads), (x, weight)


def _weight_grad(xp, dy, kh, kw):
  """dw[i, j] = xp[:, i:, j:]^T dy over (b, h, w), the contraction flattened to 2-D GEMMs.

  Both channel counts >= IM2COL_DW_MIN_CHANNELS (float32, float64; the default at >= 128) or
  IM2COL_BF16_DW_MIN (bfloat16): one GEMM of the column patches (`_im2col_weight_grad`).

  bf16 on the AMX path, or a small output (<= GEMM_MAX_PIXELS pixels; off by default): one GEMM of
  the image patches [kh*kw*Cin, B*H*W] (built from the channel-first input, so that the GEMM's operands are
  in the row-major layout XLA:CPU's bf16 kernels take) with dy [B*H*W, Cout]. Otherwise one GEMM
  per tap (XLA:CPU runs the same contraction over three separate dims at under half the speed,
  and its weight-gradient conv at a third)."""
  cin, ho, wo = xp.shape[-1], dy.shape[1], dy.shape[2]
  dy2 = dy.reshape(-1, dy.shape[-1])
  acc = _acc(dy.dtype)
  if _im2col(xp, dy, weight_grad=True):
    return _im2col_weight_grad(xp, dy, kh, kw)
  if (xp.dtype == jnp.bfloat16 and min(cin, dy2.shape[1]) >= AMX_MIN_CHANNELS) \
      or ho * wo <= GEMM_MAX_PIXELS:
    xt = jnp.transpose(xp, (3, 0, 1, 2))                       # [Cin, B, H + pads, W + pads]
    pt = jnp.concatenate([xt[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)])
    dw = lax.dot_general(pt.reshape(kh * kw * cin, -1), dy2, (((1,), (0,)), ((), ())),
                         preferred_element_type=acc)
    return dw.reshape(kh, kw, cin, -1)
  tap = lambda i, j: lax.dot_general(xp[:, i:i + ho, j:j + wo].reshape(-1, cin), dy2,
                                     (((0,), (0,)), ((), ())), preferred_element_type=acc)
  return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])


def _conv2d_s1_bwd(pads, res, dy):
  x, weight = res
  (t, b), (l, r) = pads
  kh, kw = weight.shape[:2]
  if min(t, b, l, r) < 0 or max(t, b) > kh - 1 or max(l, r) > kw - 1:
    raise ValueError(f"conv2d_s1 supports pads in [0, k - 1], got {pads} for a {kh}x{kw} kernel")
  w_t = jnp.swapaxes(jnp.flip(weight, (0, 1)), 2, 3).astype(dy.dtype)
  dx = conv2d_s1(dy, w_t, ((kh - 1 - t, kh - 1 - b), (kw - 1 - l, kw - 1 - r)))
  xp = jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0))).astype(dy.dtype)
  dw = _weight_grad(xp, dy, kh, kw)
  return _like(dx, x), _like(dw, weight)


def _like(cotangent, primal):
  """The cotangent in the primal's dtype and, under shard_map, its device variance: a replicated
  (invariant) operand's cotangent is summed over the axes the result varies along, as the
  transpose of JAX's implicit cast of that operand would do."""
  extra = tuple(sorted(varying_axes(cotangent) - varying_axes(primal)))
  if extra:
    cotangent = jax.lax.psum(cotangent, extra)
  return cotangent.astype(primal.dtype)


conv2d_s1.defvjp(_conv2d_s1_fwd, _conv2d_s1_bwd)

CONV_IMPLS = ("auto", "xla", "phases")


def conv2d(x, weight, stride: int = 1, padding=0, *, impl: str = "auto"):
  """PyTorch `conv2d(x, w, stride, padding)` on NHWC / HWIO. `padding`: an int or ((t, b), (l, r)).

  impl="xla": one `lax.conv_general_dilated` and JAX's derivatives (cuDNN on GPU, TPU convs).
  impl="phases": built from the stride-1 `conv2d_s1` and its hand-written derivatives. A stride-s
    convolution is the sum over the s x s sub-pixel phases (a, b) of the stride-1 VALID convolutions
    of x[a::s, b::s] with w[a::s, b::s]: output (m, n) reads x[s m + t, s n + u], and t = a + s i
    splits every tap into its phase a and its offset i. Same FLOPs, and every derivative is a
    stride-1 conv, a matmul, a strided slice or a pad; XLA:CPU runs the `lhs_dilation` conv of a
    strided conv's input gradient far below its dense speed.
  impl="auto": "phases" on CPU (measured there; README "Speed"), "xla" elsewhere.
  """
  pads = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "xla" or (impl == "auto" and jax.default_backend() != "cpu"):
    return lax.conv_general_dilated(x, weight, (stride, stride), pads, dimension_numbers=_DN)
  if stride == 1:
    return conv2d_s1(x, weight, pads)
  x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  k0, k1 = weight.shape[:2]
  oh, ow = (x.shape[1] - k0) // stride + 1, (x.shape[2] - k1) // stride + 1
  y = None
  for a in range(min(stride, k0)):
    for b in range(min(stride, k1)):
      w_ab = weight[a::stride, b::stride]
      x_ab = x[:, a::stride, b::stride][:, :oh + w_ab.shape[0] - 1, :ow + w_ab.shape[1] - 1]
      term = conv2d_s1(x_ab, w_ab)
      y = term if y is None else y + term
  return y


class FusedLeakyReLU(nn.Module):
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    b = self.param("bias", nn.initializers.zeros, (x.shape[-1],)) if self.use_bias else None
    return fused_leaky_relu(x, b)


class Blur(nn.Module):
  """upfirdn2d with a fixed FIR kernel (a constant, not a parameter)."""
  kernel: Sequence[float]
  pad: tuple[int, int]
  upsample_factor: int = 1

  def __call__(self, x):
    k = make_kernel(self.kernel)
    if self.upsample_factor > 1:
      k = k * (self.upsample_factor ** 2)
    return upfirdn2d(x, k, pad=self.pad)


class Upsample(nn.Module):
  """ToRGB skip upsampling: upfirdn2d(up=2) with kernel*4 and pad ((p+1)//2+1, p//2)."""
  kernel: Sequence[float]
  factor: int = 2

  def __call__(self, x):
    k = make_kernel(self.kernel) * (self.factor ** 2)
    p = k.shape[0] - self.factor
    return upfirdn2d(x, k, up=self.factor, pad=((p + 1) // 2 + self.factor - 1, p // 2))


def conv_transpose_stride2(x, weight, dtype=None):
  """PyTorch `conv_transpose2d(x, w, stride=2, padding=0)` on NHWC, output 2H + k - 2.

  `weight` is [k, k, in, out] in PyTorch's orientation (unflipped). The transposed convolution is
  computed as its four sub-pixel phases: output (2m + a, 2n + b) only sees taps t = a (mod 2), so each
  phase is an ordinary stride-1 convolution with a 2x2, 2x1, 1x2 or 1x1 slice of the kernel, and the
  phases are interleaved. Same FLOPs as the transposed conv, and no dilated convolutions, whose
  gradients XLA:CPU runs an order of magnitude slower.
  """
  b, h, w, _ = x.shape
  k = weight.shape[0]
  dtype = dtype or x.dtype
  n = [(k - a + 1) // 2 for a in (0, 1)]          # taps per phase
  sh, sw = h + n[0] - 1, w + n[0] - 1              # longest phase
  rows = []
  for a in (0, 1):
    cols = []
    for c in (0, 1):
      ka = weight[a::2][::-1]                      # taps t = a + 2s, reversed for correlation
      kc = ka[:, c::2][:, ::-1]
      if 0 in kc.shape[:2]:                        # k = 1: the odd phases receive no tap
        cols.append(jnp.zeros((b, sh, sw, weight.shape[-1]), dtype))
        continue
      pads = ((n[a] - 1, n[a] - 1), (n[c] - 1, n[c] - 1))
      y = conv2d(x.astype(dtype), kc.astype(dtype), 1, pads)
      cols.append(jnp.pad(y, ((0, 0), (0, sh - y.shape[1]), (0, sw - y.shape[2]), (0, 0))))
    rows.append(jnp.stack(cols, axis=3))            # [B, sh, sw, 2(c), C]
  y = jnp.stack(rows, axis=2)                       # [B, sh, 2(a), sw, 2(c), C]
  y = y.reshape(b, 2 * sh, 2 * sw, y.shape[-1])
  return y[:, :2 * h + k - 2, :2 * w + k - 2]


def modulated_conv(x, weight, s, *, demodulate: bool, upsample: bool, fused: bool,
                   blur_kernel: Sequence[float], dtype=None):
  """Modulated convolution. `weight` is the already-scaled HWIO kernel, `s` the styles [B, in].

  Non-fused (default): x*s -> dense conv -> *d.  Fused: per-sample weights and a batch-grouped conv
  (rosinality's only path; slow, kept for parity checks).  The up-conv is rosinality's stride-2
  transposed conv (output 2H+1) followed by a blur with kernel*4 and pad (1, 1).
  """
  b = x.shape[0]
  kh, kw, cin, cout = weight.shape
  dtype = dtype or x.dtype
  acc = jnp.promote_types(weight.dtype, jnp.float32)  # demodulation statistics in >= float32
  w32 = weight.astype(acc)
  s32 = s.astype(acc)
  if upsample:
    k_eff = weight[::-1, ::-1]   # transposed conv == dilated conv with the spatially flipped kernel
    conv_kw = dict(window_strides=(1, 1), padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
                   lhs_dilation=(2, 2))
  else:
    k_eff = weight
    conv_kw = dict(window_strides=(1, 1), padding=((kh // 2, kh // 2), (kw // 2, kw // 2)))
  if not fused:
    xs = (x * s[:, None, None, :].astype(x.dtype)).astype(dtype)
    if upsample:
      y = conv_transpose_stride2(xs, weight, dtype)
    else:
      y = conv2d(xs, k_eff.astype(dtype), 1, conv_kw["padding"])
    if demodulate:
      wsq = jnp.sum(jnp.square(w32), axis=(0, 1))                 # [in, out]
      d = lax.rsqrt(jnp.dot(jnp.square(s32), wsq) + 1e-8)        # [B, out]
      y = y * d[:, None, None, :].astype(y.dtype)
  else:
    wb = w32[None] * s32[:, None, None, :, None]                 # [B, kh, kw, in, out]
    if demodulate:
      wb = wb * lax.rsqrt(jnp.sum(jnp.square(wb), axis=(1, 2, 3), keepdims=True) + 1e-8)
    if upsample:
      wb = wb[:, ::-1, ::-1]
    h, w_ = x.shape[1], x.shape[2]
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, w_, b * cin)
    rhs = jnp.transpose(wb, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, b * cout)
    y = lax.conv_general_dilated(xg.astype(dtype), rhs.astype(dtype), dimension_numbers=_DN,
                                 feature_group_count=b, **conv_kw)
    y = jnp.transpose(y.reshape(y.shape[1], y.shape[2], b, cout), (2, 0, 1, 3))
  if upsample:
    k = make_kernel(blur_kernel) * 4
    p = (k.shape[0] - 2) - (kh - 1)
    y = upfirdn2d(y, k, pad=((p + 1) // 2 + 1, p // 2 + 1))
  return y


class ModulatedConv2d(nn.Module):
  """rosinality ModulatedConv2d; weight stored [k, k, in, out] (torch [1, out, in, k, k])."""
  features: int
  kernel_size: int
  demodulate: bool = True
  upsample: bool = False
  fused: bool = False
  blur_kernel: Sequence[float] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. bfloat16); None = the input's dtype

  @nn.compact
  def __call__(self, x, style):
    cin, k = x.shape[-1], self.kernel_size
    weight = self.param("weight", _torch_normal, (k, k, cin, self.features))
    s = EqualLinear(cin, bias_init=1.0, name="modulation")(style)
    scale = 1.0 / math.sqrt(cin * k * k)
    return modulated_conv(x, weight * scale, s, demodulate=self.demodulate, upsample=self.upsample,
                          fused=self.fused, blur_kernel=self.blur_kernel, dtype=self.dtype)


class NoiseInjection(nn.Module):
  """x + weight * noise; `noise` is [B, H, W, 1] (or broadcastable)."""

  @nn.compact
  def __call__(self, x, noise):
    w = self.param("weight", nn.initializers.zeros, (1,))
    return x + (w * noise).astype(x.dtype)


class ConstantInput(nn.Module):
  channels: int
  size: int = 4

  @nn.compact
  def __call__(self, batch: int):
    c = self.param("input", _torch_normal, (1, self.size, self.size, self.channels))
    return jnp.broadcast_to(c, (batch,) + c.shape[1:])


def clamp(x, limit: Optional[float]):
  """NVIDIA's `conv_clamp` (stylegan2-ada-pytorch torch_utils/ops/bias_act.py: clamp to
  [-limit, limit] after bias, activation and gain); None = no clamp (rosinality)."""
  return x if limit is None else jnp.clip(x, -limit, limit)


class StyledConv(nn.Module):
  """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU (rosinality order) [-> clamp]."""
  features: int
  kernel_size: int
  upsample: bool = False
  demodulate: bool = True
  fused: bool = False
  blur_kernel: Sequence[float] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None  # NVIDIA: SynthesisLayer clamps after lrelu * sqrt(2)

  @nn.compact
  def __call__(self, x, style, noise):
    x = ModulatedConv2d(self.features, self.kernel_size, self.demodulate, self.upsample, self.fused,
                        self.blur_kernel, self.dtype, name="conv")(x, style)
    x = NoiseInjection(name="noise")(x, noise)
    return clamp(FusedLeakyReLU(name="activate")(x), self.conv_clamp)


class ToRGB(nn.Module):
  """1x1 modulated conv (no demodulation) + bias [3] [-> clamp]; adds the upsampled skip."""
  upsample: bool = True
  fused: bool = False
  blur_kernel: Sequence[float] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None  # NVIDIA: ToRGBLayer clamps after the bias, before the sum

  @nn.compact
  def __call__(self, x, style, skip=None):
    y = ModulatedConv2d(3, 1, demodulate=False, fused=self.fused, dtype=self.dtype,
                        name="conv")(x, style)
    y = clamp(y + self.param("bias", nn.initializers.zeros, (3,)).astype(y.dtype), self.conv_clamp)
    if skip is not None:
      y = y + Upsample(self.blur_kernel)(skip).astype(y.dtype)
    return y
