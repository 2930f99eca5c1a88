"""upfirdn2d: upsample, pad, FIR filter, downsample (rosinality semantics, NHWC).

rosinality's `upfirdn2d_native` (op/upfirdn2d.py) does, per channel:
  1. insert `up - 1` zeros after *every* input sample (length H*up, not (H-1)*up+1);
  2. pad by (pad0, pad1) on both axes (negative values crop);
  3. a true convolution with the kernel (correlation with the flipped kernel), VALID;
  4. keep every `down`-th sample.
Output size: (H*up + pad0 + pad1 - kh + down) // down.

Here the four steps are one depthwise `lax.conv_general_dilated`: `lhs_dilation=up` inserts
(H-1)*(up-1) zeros, so `up - 1` extra zeros go into the high-side padding.
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


def upfirdn2d(x: jnp.ndarray, kernel, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jnp.ndarray:
  """Depthwise upfirdn2d on NHWC `x` with a 2-D `kernel`; `pad` applies to both axes."""
  kernel = np.asarray(kernel, dtype=np.float32)
  kh, kw = kernel.shape
  c = x.shape[-1]
  p0, p1 = pad
  # lax pads may be negative, which crops, as rosinality's negative pads do.
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
