"""StyleGAN2 generator and discriminator (rosinality/stylegan2-pytorch `model.py`), NHWC.

Submodule names follow rosinality's state_dict: `style_1 .. style_8`, `input`, `conv1`, `to_rgb1`,
`convs_{i}`, `to_rgbs_{k}` in G; `convs_{i}`, `final_conv`, `final_linear_{0,1}` in D.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l4f_jax.ops.layers import (Blur, ConstantInput, EqualConv2d, EqualLinear, FusedLeakyReLU,
                                StyledConv, ToRGB, clamp, pixel_norm)

BACKGROUND_MODES = ("auto", "conv1", "input")


def channel_table(size: int, channel_multiplier: int = 2, channel_base: Optional[int] = None,
                  channel_max: int = 512) -> dict[int, int]:
  """Channels per resolution: rosinality's table is min(16384*cm // res, 512).

  `channel_base` / `channel_max` override it (NVIDIA-style) for the project's small models;
  the defaults reproduce rosinality exactly (4..32: 512, 64: 256cm, ..., 1024: 16cm).
  """
  base = 16384 * channel_multiplier if channel_base is None else channel_base
  return {2 ** i: min(base // 2 ** i, channel_max) for i in range(2, int(math.log2(size)) + 1)}


def num_layers(size: int) -> int:
  """Number of noise maps (= styled convs): 2*log2(size) - 3."""
  return 2 * int(math.log2(size)) - 3


def num_latents(size: int) -> int:
  return 2 * int(math.log2(size)) - 2


def noise_shapes(size: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
  """NHWC shapes of the noise maps, rosinality's order: 4, 8, 8, 16, 16, ..."""
  return [(batch, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2), 1) for j in range(num_layers(size))]


def make_noise(key, size: int, batch: int, dtype=jnp.float32) -> list[jnp.ndarray]:
  """Fresh N(0,1) noise, one key per layer (a shared key would repeat maps at equal resolution)."""
  keys = jax.random.split(key, num_layers(size))
  return [jax.random.normal(k, s, dtype) for k, s in zip(keys, noise_shapes(size, batch))]


class Generator(nn.Module):
  """rosinality Generator.

  __call__(styles, ...) -> (image NHWC in ~[-1, 1], unclamped; features), where `features` is the list
  of post-activation outputs of every StyledConv: [conv1, convs_0, convs_1, ...] (num_layers entries).
  """
  size: int
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 2
  lr_mlp: float = 0.01
  channel_base: Optional[int] = None
  channel_max: int = 512
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  fused_modconv: bool = False  # rosinality's batch-grouped conv; False = the faster equal form
  dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None  # NVIDIA's conv_clamp (256 in their configs); None: rosinality

  def setup(self):
    ch = channel_table(self.size, self.channel_multiplier, self.channel_base, self.channel_max)
    self.log_size = int(math.log2(self.size))
    if 2 ** self.log_size != self.size or self.size < 8:
      raise ValueError(f"Generator size must be a power of two >= 8, got {self.size}")
    self.n_latent = num_latents(self.size)
    self.num_layers = num_layers(self.size)
    self.style = [EqualLinear(self.style_dim, lr_mul=self.lr_mlp, activation="fused_lrelu",
                              name=f"style_{i + 1}") for i in range(self.n_mlp)]
    kw = dict(blur_kernel=self.blur_kernel, fused=self.fused_modconv, dtype=self.dtype,
              conv_clamp=self.conv_clamp)
    self.input = ConstantInput(ch[4], name="input")
    self.conv1 = StyledConv(ch[4], 3, name="conv1", **kw)
    self.to_rgb1 = ToRGB(upsample=False, name="to_rgb1", **kw)
    convs, to_rgbs = [], []
    for i in range(3, self.log_size + 1):
      c = ch[2 ** i]
      convs.append(StyledConv(c, 3, upsample=True, name=f"convs_{len(convs)}", **kw))
      convs.append(StyledConv(c, 3, name=f"convs_{len(convs)}", **kw))
      to_rgbs.append(ToRGB(name=f"to_rgbs_{len(to_rgbs)}", **kw))
    self.convs, self.to_rgbs = convs, to_rgbs

  def mapping(self, z):
    """z [..., style_dim] -> w: PixelNorm then n_mlp EqualLinear(lr_mul, fused lrelu)."""
    x = pixel_norm(z)
    for layer in self.style:
      x = layer(x)
    return x

  def __call__(self, styles, *, input_is_latent: bool = False, truncation: float = 1.0,
               truncation_latent=None, noise: Optional[Sequence[jnp.ndarray]] = None,
               noise_key=None, mixing_key=None, background: bool = False,
               background_mode: str = "auto"):
    """Run G.

    styles: z or w [B, style_dim], w+ [B, n_latent, style_dim] (with input_is_latent), or a list of two
      such arrays for style mixing (needs `mixing_key`; the crossover is randint(1, n_latent - 1)).
    truncation: psi; applied as w_avg + psi (w - w_avg) only when psi < 1 (rosinality), w_avg given in
      `truncation_latent` [1 or B, style_dim].
    noise: explicit maps [B or 1, r, r, 1] in rosinality's order; otherwise drawn from `noise_key`.
    background: Labels4Free's G_bg. `background_mode`: "conv1" zeroes the 4x4 conv1 output, "input"
      zeroes the constant input before conv1; "auto" is the official choice ("input" at 512 px only).
    """
    if not isinstance(styles, (list, tuple)):
      styles = [styles]
    if not input_is_latent:
      styles = [self.mapping(s) for s in styles]
    if truncation < 1:
      if truncation_latent is None:
        raise ValueError("truncation < 1 needs truncation_latent (the mean w, see mean_latent)")
      styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
    batch = styles[0].shape[0]
    if len(styles) == 1:
      s = styles[0]
      latent = s if s.ndim == 3 else jnp.repeat(s[:, None], self.n_latent, axis=1)
    elif len(styles) == 2:
      if mixing_key is None:
        raise ValueError("style mixing (two styles) needs mixing_key")
      inject = jax.random.randint(mixing_key, (), 1, self.n_latent)  # randint(1, n_latent-1) inclusive
      idx = jnp.arange(self.n_latent)[None, :, None]
      l1 = styles[0] if styles[0].ndim == 3 else styles[0][:, None]
      l2 = styles[1] if styles[1].ndim == 3 else styles[1][:, None]
      latent = jnp.where(idx < inject, l1, l2)
    else:
      raise ValueError(f"expected one or two styles, got {len(styles)}")

    if noise is None:
      if noise_key is None:
        raise ValueError("pass noise maps or a noise_key (one fresh key is split per layer)")
      noise = make_noise(noise_key, self.size, batch)
    if len(noise) != self.num_layers:
      raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
    if background_mode not in BACKGROUND_MODES:
      raise ValueError(f"background_mode must be one of {BACKGROUND_MODES}, got {background_mode!r}")
    mode = ("input" if self.size == 512 else "conv1") if background_mode == "auto" else background_mode

    out = self.input(batch)
    if background and mode == "input":
      out = out * 0
    out = self.conv1(out, latent[:, 0], noise[0])
    if background and mode == "conv1":
      out = out * 0
    features = [out]
    skip = self.to_rgb1(out, latent[:, 1])
    i = 1
    for k in range(len(self.to_rgbs)):
      out = self.convs[2 * k](out, latent[:, i], noise[1 + 2 * k])
      features.append(out)
      out = self.convs[2 * k + 1](out, latent[:, i + 1], noise[2 + 2 * k])
      features.append(out)
      skip = self.to_rgbs[k](out, latent[:, i + 2], skip)
      i += 2
    return skip, features


N_MEAN_LATENT = 4096  # z samples of w-bar (rosinality's mean_latent, Labels4Free)


def mean_latent(generator: Generator, params, key, n: int = N_MEAN_LATENT):
  """Mean w over n random z ([1, style_dim]), as rosinality's `mean_latent` and Labels4Free use."""
  z = jax.random.normal(key, (n, generator.style_dim))
  w = generator.apply({"params": params}, z, method=Generator.mapping)
  return jnp.mean(w, axis=0, keepdims=True)


class ConvLayer(nn.Module):
  """rosinality ConvLayer: [Blur] -> EqualConv2d -> [FusedLeakyReLU [-> clamp]].

  `conv_clamp` clamps activated outputs as NVIDIA's Conv2dLayer does (stylegan2-ada-pytorch
  training/networks.py: D's fromrgb, block convs and epilogue conv). Their resnet block's second
  conv clamps at c * sqrt(1/2) after its sqrt(1/2) gain; rosinality applies the 1/sqrt(2) after
  the sum, so clamping at c before it is the same."""
  features: int
  kernel_size: int
  downsample: bool = False
  use_bias: bool = True
  activate: bool = True
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x):
    if self.downsample:
      p = (len(self.blur_kernel) - 2) + (self.kernel_size - 1)
      x = Blur(self.blur_kernel, pad=((p + 1) // 2, p // 2))(x)
      stride, padding = 2, 0
    else:
      stride, padding = 1, self.kernel_size // 2
    x = EqualConv2d(self.features, self.kernel_size, stride, padding,
                    use_bias=self.use_bias and not self.activate, dtype=self.dtype, name="conv")(x)
    if self.activate:
      x = clamp(FusedLeakyReLU(use_bias=self.use_bias, name="activate")(x), self.conv_clamp)
    return x


class ResBlock(nn.Module):
  features: int
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None  # both convs, not the skip (NVIDIA)

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    out = ConvLayer(cin, 3, dtype=self.dtype, conv_clamp=self.conv_clamp, name="conv1")(x)
    out = ConvLayer(self.features, 3, downsample=True, blur_kernel=self.blur_kernel,
                    dtype=self.dtype, conv_clamp=self.conv_clamp, name="conv2")(out)
    skip = ConvLayer(self.features, 1, downsample=True, use_bias=False, activate=False,
                     blur_kernel=self.blur_kernel, dtype=self.dtype, name="skip")(x)
    return (out + skip) / math.sqrt(2)


def minibatch_stddev(x, group_size: int = 4, num_features: int = 1):
  """rosinality's minibatch stddev on NHWC: strided groups (sample b = g*(B/G) + m joins column m)."""
  b, h, w, c = x.shape
  g = min(b, group_size)
  if b % g:
    raise ValueError(f"batch {b} is not divisible by the minibatch-stddev group size {g}")
  y = x.reshape(g, b // g, h, w, num_features, c // num_features)
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)                 # [B/G, H, W, F, C/F]
  y = jnp.mean(y, axis=(1, 2, 4))                          # [B/G, F]
  y = jnp.tile(y, (g, 1))                                  # [B, F]
  y = jnp.broadcast_to(y[:, None, None, :], (b, h, w, num_features)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


class Discriminator(nn.Module):
  """rosinality Discriminator. Input NHWC [B, S, S, 3] -> logits [B, 1].

  Minibatch stddev groups are formed inside each call, so under shard_map each device groups only its
  own rows (pmap/DDP semantics). The final flatten uses NCHW order, as the converted weights expect.
  """
  size: int
  channel_multiplier: int = 2
  stddev_group: int = 4
  stddev_feat: int = 1
  channel_base: Optional[int] = None
  channel_max: int = 512
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = None  # compute dtype (e.g. jnp.bfloat16); None = the input's dtype
  conv_clamp: Optional[float] = None  # NVIDIA's conv_clamp: fromrgb, block convs, final conv

  @nn.compact
  def __call__(self, x, stddev_chunks: int = 1):
    """stddev_chunks: the batch is that many separate D calls (contiguous chunks), each forming
    its own minibatch-stddev groups; everything else in D is per sample."""
    ch = channel_table(self.size, self.channel_multiplier, self.channel_base, self.channel_max)
    log_size = int(math.log2(self.size))
    clamp_kw = dict(dtype=self.dtype, conv_clamp=self.conv_clamp)
    out = ConvLayer(ch[self.size], 1, name="convs_0", **clamp_kw)(x)
    for n, i in enumerate(range(log_size, 2, -1), start=1):
      out = ResBlock(ch[2 ** (i - 1)], self.blur_kernel, name=f"convs_{n}", **clamp_kw)(out)
    if out.shape[0] % stddev_chunks:
      raise ValueError(f"batch {out.shape[0]} is not divisible by {stddev_chunks} stddev chunks")
    chunked = out.reshape((stddev_chunks, -1) + out.shape[1:])
    stddev = lambda y: minibatch_stddev(y, self.stddev_group, self.stddev_feat)
    out = jax.vmap(stddev)(chunked).reshape(out.shape[:3] + (-1,))
    out = ConvLayer(ch[4], 3, name="final_conv", **clamp_kw)(out)
    b = out.shape[0]
    out = jnp.transpose(out, (0, 3, 1, 2)).reshape(b, -1)  # NCHW flatten, as torch .view(B, -1)
    out = EqualLinear(ch[4], activation="fused_lrelu", dtype=self.dtype, name="final_linear_0")(out)
    out = EqualLinear(1, dtype=self.dtype, name="final_linear_1")(out)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))


def discriminate_in_chunks(discriminator: Discriminator, d_params, *xs, chunks: int = 1):
  """D logits [B, 1] per image batch in `xs`, D called separately per batch and per each of `chunks`
  contiguous chunks of it (every call forms its own minibatch-stddev groups: one device emulating
  `chunks` devices, and real and fake never sharing a group). The calls run as one batched
  D, which computes exactly the separate calls. One array for one batch, else a tuple."""
  b = xs[0].shape[0]
  if b % chunks:
    raise ValueError(f"local batch {b} is not divisible by {chunks} stddev chunks")
  out = discriminator.apply({"params": d_params}, jnp.concatenate(xs),
                            stddev_chunks=len(xs) * chunks)
  return out if len(xs) == 1 else tuple(out.reshape((len(xs), b) + out.shape[1:]))
