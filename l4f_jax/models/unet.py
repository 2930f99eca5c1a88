"""A small U-Net student segmenter: NHWC images in [-1, 1] -> foreground logits [B, H, W, 1].

Labels4Free's alpha network A only labels images the generator makes (it reads G's features). To
segment real photos, a student is trained on (generated image, alpha of A) pairs, as Voynov et al.
and Melas-Kyriazi et al. train a U-Net on generated masks. Why a U-Net:
- skip connections carry full-resolution encoder features straight to the output, so thin parts and
  exact boundaries survive the downsampling that gives the network its receptive field;
- it is the peers' student architecture, so results compare with theirs;
- it is small and fully convolutional: the same weights run at any H, W divisible by 2 ** depth, and
  width / depth scale it from 64 px toy data to 256-1024 px datasets.

Layout (w_l = min(base_width * 2 ** l, max_width), levels l = 0..depth, level l at H / 2 ** l):

  encoder  level 0: blocks_per_level x Block(w_0) on the input
           level l: AvgPool 2x2, blocks_per_level x Block(w_l)        (level `depth` = bottleneck)
  decoder  level l = depth-1..0: Conv1x1(w_l) at the coarse level, bilinear 2x upsampling,
           concat with the encoder's level-l output, blocks_per_level x Block(w_l)
  head     Conv1x1(1) -> logits, returned in float32

  Block(w) = Conv3x3(w) -> GroupNorm -> ReLU      (the conv has a bias only when norm = "none")

Choices: average pooling downsamples without parameters or aliasing-prone strides; the 1x1 channel
reduction runs before the upsampling (the two linear maps commute, bilinear weights sum to 1), the
classic U-Net "up-conv that halves the channels" at a quarter of the cost; the 2x bilinear
upsampling is written with shifts (O(HW)), since `jax.image.resize` contracts with dense [out, in]
matrices, whose cost grows quadratically with the side. GroupNorm, not BatchNorm: it has no
running statistics (no mutable state to thread through a pure step) and normalises each sample
alone, so results do not depend on the per-device batch size under data parallelism (the sharded
step equals the single-device step on the global batch).

The default (base_width 16, depth 3, 2 blocks, max_width 64; widths 16-32-64-64) has 298,673
parameters and ~0.13 GMAC per 64 px image, spread evenly over the levels; on 2 shared CPU cores a
batch-32 Adam step at 64 px takes ~0.5-1 s (base_width 8: 113k parameters, ~0.3 s). For
256-1024 px use e.g. base_width 32, depth 5, max_width 256.
"""
from __future__ import annotations

import dataclasses

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l4f_jax.config import option


def level_widths(base_width: int, depth: int, max_width: int) -> list[int]:
  """[w_0, ..., w_depth]: channels per level, doubling from base_width, capped at max_width."""
  return [min(base_width * 2 ** l, max_width) for l in range(depth + 1)]


def avg_pool2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 average pooling, stride 2, of NHWC x with even H, W."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _up2_axis(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  n = x.shape[axis]
  sl = lambda a, b: jax.lax.slice_in_dim(x, a, b, axis=axis)
  prev = jnp.concatenate([sl(0, 1), sl(0, n - 1)], axis=axis)  # x[i - 1], clamped
  nxt = jnp.concatenate([sl(1, n), sl(n - 1, n)], axis=axis)  # x[i + 1], clamped
  out = jnp.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] *= 2
  return out.reshape(shape)


def upsample2_bilinear(x: jnp.ndarray) -> jnp.ndarray:
  """2x bilinear upsampling of NHWC x (half-pixel centres, edge clamp): `jax.image.resize(x,
  (B, 2H, 2W, C), "bilinear")` computed in O(HW) with two shifted copies per axis."""
  return _up2_axis(_up2_axis(x, 1), 2)


class UNet(nn.Module):
  """U-Net(images [B, H, W, 3] in [-1, 1]) -> logits [B, H, W, 1] (float32).

  base_width: channels of level 0; doubles per level up to max_width.
  depth: number of 2x downsamplings; H and W must be divisible by 2 ** depth.
  blocks_per_level: Conv3x3-Norm-ReLU blocks per level, in encoder and decoder.
  norm: "group" (GroupNorm with gcd(width, norm_groups) groups) or "none".
  dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, logits are float32 (or
    float64 for float64 inputs and parameters).
  """
  base_width: int = 16
  depth: int = 3
  blocks_per_level: int = 2
  max_width: int = 64
  norm: str = "group"
  norm_groups: int = 8
  dtype: Any = None

  def _block(self, x, width: int, name: str):
    if self.norm not in ("group", "none"):
      raise ValueError(f"UNet norm must be 'group' or 'none', got {self.norm!r}")
    x = nn.Conv(width, (3, 3), padding="SAME", use_bias=self.norm == "none", dtype=self.dtype,
                name=f"{name}_conv")(x)
    if self.norm == "group":
      x = nn.GroupNorm(num_groups=math.gcd(width, self.norm_groups), epsilon=1e-5,
                       dtype=self.dtype, name=f"{name}_norm")(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    if images.ndim != 4:
      raise ValueError(f"UNet expects NHWC images, got shape {images.shape}")
    _, h, w, _ = images.shape
    f = 2 ** self.depth
    if h % f or w % f:
      raise ValueError(f"UNet(depth={self.depth}) needs H, W divisible by {f}, got {h}x{w}")
    widths = level_widths(self.base_width, self.depth, self.max_width)
    x = images if self.dtype is None else images.astype(self.dtype)
    skips = []
    for l, width in enumerate(widths):
      if l > 0:
        x = avg_pool2(x)
      for k in range(self.blocks_per_level):
        x = self._block(x, width, f"enc{l}_{k}")
      skips.append(x)
    for l in reversed(range(self.depth)):
      x = nn.Conv(widths[l], (1, 1), dtype=self.dtype, name=f"up{l}")(x)
      x = jnp.concatenate([upsample2_bilinear(x), skips[l]], axis=-1)
      for k in range(self.blocks_per_level):
        x = self._block(x, widths[l], f"dec{l}_{k}")
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


@dataclasses.dataclass(frozen=True)
class SegmenterArch:
  """The U-Net's architecture (stored in the export's config.json)."""
  width: int = option(16, "U-Net channels at full resolution (doubled per level up to "
                      "--max_width).", ge=1)
  depth: int = option(3, "U-Net downsamplings (input size must be divisible by 2**depth).", ge=1)
  blocks: int = option(2, "Conv blocks per U-Net level.", ge=1)
  max_width: int = option(64, "U-Net channel cap.", ge=1)

  def module(self, dtype=None) -> UNet:
    return UNet(base_width=self.width, depth=self.depth, blocks_per_level=self.blocks,
                max_width=self.max_width, dtype=dtype)
