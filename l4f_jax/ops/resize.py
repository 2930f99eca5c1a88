"""Torch-exact resizing.

`torch.nn.Upsample(mode="bicubic", align_corners=True)` is cubic convolution with A = -0.75, source
coordinate src = dst * (in - 1) / (out - 1), four taps clamped to the border. `jax.image.resize` uses
Keys a = -0.5 and half-pixel centres, so it is not the same function. The filter is separable and is
applied as two dense [out, in] matrices, built once on the host in float64.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

_A = -0.75


def _cc1(x):
  return ((_A + 2) * x - (_A + 3)) * x * x + 1


def _cc2(x):
  return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of torch's bicubic (align_corners=True) interpolation weights."""
  m = np.zeros((n_out, n_in), np.float64)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for o in range(n_out):
    src = o * scale
    i0 = int(np.floor(src))
    t = src - i0
    ws = (_cc2(t + 1), _cc1(t), _cc1(1 - t), _cc2(2 - t))
    for tap, wgt in zip(range(i0 - 1, i0 + 3), ws):
      m[o, min(max(tap, 0), n_in - 1)] += wgt
  m.setflags(write=False)
  return m


def resize_bicubic_align_corners(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """NHWC bicubic resize equal to torch interpolate(mode='bicubic', align_corners=True)."""
  h, w = x.shape[1], x.shape[2]
  mh = jnp.asarray(bicubic_matrix(h, out_hw[0]), x.dtype)
  mw = jnp.asarray(bicubic_matrix(w, out_hw[1]), x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)
