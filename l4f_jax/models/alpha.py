"""The Labels4Free alpha network A (official `bg_extractor_repro`, model_new.py), NHWC.

A reads 2n post-activation StyledConv outputs of the foreground pass, from `min_res` up to the full
resolution (two per block), and returns a soft mask alpha in (0, 1), [B, size, size, 1]:

  P_k   = concat(conv{2k+1}(f_2k), conv{2k+2}(f_2k+1))             6 channels at r_k = min_res * 2^k
  x_0   = Up(P_0)                                                   Up: torch bicubic, align_corners
  x_k   = Up(lrelu_0.2(M_k(concat(P_k, x_{k-1}))))   k = 1..n-2,   M = conv_next, conv_next2, ...
  alpha = sigmoid(conv_n(P_{n-1} + x_{n-2}))                        element-wise add, then 6 -> 1

The official code hard-codes 6 levels (n = 6, min_res = size/32) for 256/512/1024 px. The input widths
here come from the features themselves (the generator's channel table), so every channel multiplier
works; below 256 px the network uses every block the generator has: n = min(6, log2(size) - 2).
Parameter names are the official ones, so official weights load after a layout change.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l4f_jax.ops.resize import resize_bicubic_align_corners


def alpha_levels(size: int) -> tuple[int, int]:
  """(n_levels, min_res): 6 levels from size/32 at >= 256 px (official); all blocks below."""
  n = min(6, int(math.log2(size)) - 2)
  if n < 2:
    raise ValueError(f"the alpha network needs a generator of at least 16 px, got {size}")
  return n, size // 2 ** (n - 1)


def feature_indices(size: int) -> list[int]:
  """Indices into the Generator's feature list [conv1, convs_0, ...] that A reads.

  Feature j (0..2n-1) is convs[2*b0 + j] with b0 = log2(min_res) - 3 (official: convs.0.. at 256,
  convs.2.. at 512, convs.4.. at 1024).
  """
  n, min_res = alpha_levels(size)
  b0 = int(math.log2(min_res)) - 3
  return [1 + 2 * b0 + j for j in range(2 * n)]


def select_features(features: Sequence[jnp.ndarray], size: int) -> list[jnp.ndarray]:
  return [features[i] for i in feature_indices(size)]


def merge_names(n_levels: int) -> list[str]:
  return ["conv_next"] + [f"conv_next{k}" for k in range(2, n_levels - 1)]


def _torch_uniform(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv1x1(nn.Module):
  """nn.Conv2d(in, out, 1) with PyTorch's default init; weight [1, 1, in, out], bias [out]."""
  features: int

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    w = self.param("weight", _torch_uniform(cin), (1, 1, cin, self.features))
    b = self.param("bias", _torch_uniform(cin), (self.features,))
    return jnp.einsum("bhwi,io->bhwo", x, w[0, 0]) + b


class AlphaNetwork(nn.Module):
  """A(features) -> alpha [B, size, size, 1]; `features` are the 2n maps from `select_features`."""
  size: int
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray]):
    n, min_res = alpha_levels(self.size)
    if len(features) != 2 * n:
      raise ValueError(f"AlphaNetwork({self.size}) expects {2 * n} features, got {len(features)}")
    merges = merge_names(n)
    p = []
    for k in range(n):
      f0, f1 = features[2 * k], features[2 * k + 1]
      if f0.shape[1] != min_res * 2 ** k:
        raise ValueError(f"feature {2 * k} has resolution {f0.shape[1]}, expected {min_res * 2 ** k}")
      p.append(jnp.concatenate([Conv1x1(3, name=f"conv{2 * k + 1}")(f0),
                                Conv1x1(3, name=f"conv{2 * k + 2}")(f1)], axis=-1))

    def up(x):
      return resize_bicubic_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))

    x = up(p[0])
    for k in range(1, n - 1):
      x = Conv1x1(6, name=merges[k - 1])(jnp.concatenate([p[k], x], axis=-1))
      x = up(jnp.where(x >= 0, x, self.negative_slope * x))
    return jax.nn.sigmoid(Conv1x1(1, name="conv_n")(p[n - 1] + x))
