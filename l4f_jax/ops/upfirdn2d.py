"""upfirdn2d: upsample, pad, FIR filter, downsample (rosinality semantics, NHWC).

rosinality's `upfirdn2d_native` (op/upfirdn2d.py) does, per channel:
  1. insert `up - 1` zeros after *every* input sample (length H*up, not (H-1)*up+1);
  2. pad by (pad0, pad1) on both axes (negative values crop);
  3. a true convolution with the kernel (correlation with the flipped kernel), VALID;
  4. keep every `down`-th sample.
Output size: (H*up + pad0 + pad1 - kh + down) // down.

Every StyleGAN2 kernel is separable (an outer product of 1-D taps), so the filter runs as two 1-D
passes of shifted slices and multiply-adds: zero insertion and padding are one `lax.pad` (interior
padding inserts the zeros; `up - 1` more go on the high side), and the taps are static slices.
XLA fuses this into elementwise loops whose gradients are cheap, unlike a depthwise convolution
(`feature_group_count = C`), which is several times slower forward and far slower backward on CPU.
Non-separable kernels take the depthwise-convolution path.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax


def make_kernel(k: Sequence[float]) -> np.ndarray:
  """rosinality `make_kernel`: 1-D taps -> normalised 2-D outer product (sum 1)."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  return k / k.sum()


def separable_factors(kernel) -> tuple[np.ndarray, np.ndarray] | None:
  """(kv, kh) with kernel == outer(kv, kh), or None when the kernel is not rank one."""
  k = np.asarray(kernel, np.float64)
  if k.ndim == 1:
    return k, np.ones(1)
  u, sv, vt = np.linalg.svd(k)
  if sv.size > 1 and sv[1] > 1e-7 * sv[0]:
    return None
  kv, kh = u[:, 0] * np.sqrt(sv[0]), vt[0] * np.sqrt(sv[0])
  return kv, kh


def _fir_1d(x, taps: np.ndarray, axis: int, up: int, down: int, p0: int, p1: int):
  """Zero-insert, pad/crop, convolve with `taps` (true convolution) and decimate along one axis."""
  cfg = [(0, 0, 0)] * x.ndim
  cfg[axis] = (p0, p1 + up - 1, up - 1)
  x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  n_out = x.shape[axis] - len(taps) + 1
  flipped = taps[::-1]
  y = None
  for t, c in enumerate(flipped):
    if c == 0:
      continue
    term = lax.slice_in_dim(x, t, t + n_out, axis=axis) * jnp.asarray(c, x.dtype)
    y = term if y is None else y + term
  if down > 1:
    y = lax.slice_in_dim(y, 0, n_out, stride=down, axis=axis)
  return y


def upfirdn2d(x: jnp.ndarray, kernel, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jnp.ndarray:
  """Depthwise upfirdn2d on NHWC `x` with a 2-D `kernel`; `pad` applies to both axes."""
  kernel = np.asarray(kernel, dtype=np.float64)
  p0, p1 = pad
  factors = separable_factors(kernel)
  if factors is not None:
    kv, kh = factors
    # bfloat16 filters in float32 and is rounded once: XLA:CPU rounds bf16 after every multiply
    # and add, and its fused loops (forward and gradient) spend most of their time converting
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    x = _fir_1d(x, kv, 1, up, down, p0, p1)
    return _fir_1d(x, kh, 2, up, down, p0, p1).astype(dtype)
  return _upfirdn2d_conv(x, kernel, up, down, pad)


def _upfirdn2d_conv(x, kernel, up, down, pad):
  """General (non-separable) kernel: one depthwise convolution with `lhs_dilation`."""
  c = x.shape[-1]
  p0, p1 = pad
  rhs = jnp.asarray(kernel[::-1, ::-1].copy(), dtype=x.dtype)
  rhs = jnp.tile(rhs[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
  return lax.conv_general_dilated(
      x, rhs,
      window_strides=(down, down),
      padding=((p0, p1 + up - 1), (p0, p1 + up - 1)),
      lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c,
  )
