"""Pure-torch reference of rosinality's StyleGAN2 (rosinality/stylegan2-pytorch, model.py), written independently.

CPU only, no custom ops; works in float32 and float64 (``module.double()``). State-dict keys and
shapes are exactly rosinality's. Extras beyond rosinality (``channel_base``, ``channel_max``,
``stddev_group``, ``back``/``background_mode`` and the feature list returned by the generator) default
to rosinality / Labels4Free behaviour.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------------------------------------------
# Primitive ops (§1)


def make_kernel(k):
  """1-D taps -> normalised outer product; a 2-D input is only normalised."""
  k = torch.tensor(k, dtype=torch.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  return k / k.sum()


def _pads(pad):
  if len(pad) == 2:
    return pad[0], pad[1], pad[0], pad[1]
  if len(pad) == 4:
    return tuple(pad)
  raise ValueError(f"pad must have 2 or 4 entries, got {pad!r}")


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  """Native upfirdn2d on NCHW: zero insertion to H*up, pad/crop, true conv (flipped kernel), stride.

  ``pad`` is (p0, p1) for both axes or (x0, x1, y0, y1).
  """
  x0, x1, y0, y1 = _pads(pad)
  b, c, h, w = x.shape
  kh, kw = kernel.shape
  out = x.reshape(b * c, 1, h, 1, w, 1)
  out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])  # zeros after every sample, on both axes
  out = out.reshape(b * c, 1, h * up, w * up)
  out = F.pad(out, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
  out = out[:, :, max(-y0, 0):out.shape[2] - max(-y1, 0), max(-x0, 0):out.shape[3] - max(-x1, 0)]
  weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(out.dtype)
  out = F.conv2d(out, weight)  # correlation with the flipped kernel = true convolution
  out = out[:, :, ::down, ::down]
  return out.reshape(b, c, out.shape[2], out.shape[3])


def upfirdn2d_depthwise(x, kernel, up=1, down=1, pad=(0, 0)):
  """upfirdn2d as ONE depthwise (channel-grouped) conv over [B, C, H, W] instead of a one-channel
  conv over B*C images: the same zero insertion, pad/crop and true convolution, and the same values
  up to summation order. PyTorch's grouped conv is its fast CPU path for this; a lean non-fused
  PyTorch StyleGAN2 blurs this way (`use_upfirdn2d(module, "depthwise")`)."""
  x0, x1, y0, y1 = _pads(pad)
  b, c, h, w = x.shape
  kh, kw = kernel.shape
  out = x
  if up > 1:
    out = x.new_zeros(b, c, h * up, w * up)
    out[:, :, ::up, ::up] = x
  out = F.pad(out, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
  out = out[:, :, max(-y0, 0):out.shape[2] - max(-y1, 0), max(-x0, 0):out.shape[3] - max(-x1, 0)]
  weight = torch.flip(kernel, [0, 1]).to(out.dtype).expand(c, 1, kh, kw)
  return F.conv2d(out, weight, stride=down, groups=c)


UPFIRDN2D = {"native": upfirdn2d, "depthwise": upfirdn2d_depthwise}


def use_upfirdn2d(module, impl):
  """Switches every Blur / Upsample inside `module` to `impl` ("native": rosinality's CPU path, the
  default; "depthwise": upfirdn2d_depthwise). Returns the module."""
  if impl not in UPFIRDN2D:
    raise ValueError(f"upfirdn2d impl must be one of {sorted(UPFIRDN2D)}, got {impl!r}")
  for m in module.modules():
    if isinstance(m, (Blur, Upsample)):
      m.upfirdn2d = UPFIRDN2D[impl]
  return module


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
  """lrelu(x + b, 0.2) * sqrt(2); the bias broadcasts along dim 1."""
  if bias is not None:
    rest = [1] * (x.ndim - 2)
    x = x + bias.view(1, bias.shape[0], *rest)
  return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
  """Bias (init 0) + leaky ReLU 0.2 + gain sqrt(2)."""

  def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
    self.negative_slope = negative_slope
    self.scale = scale

  def forward(self, x):
    return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class PixelNorm(nn.Module):
  """x * rsqrt(mean_c(x^2) + 1e-8)."""

  def forward(self, x):
    return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
  """ToRGB skip upsampler: kernel x factor^2, up=factor, pad (2, 1) for [1,3,3,1]."""

  def __init__(self, kernel, factor=2):
    super().__init__()
    self.factor = factor
    self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
    p = self.kernel.shape[0] - factor
    self.pad = ((p + 1) // 2 + factor - 1, p // 2)
    self.upfirdn2d = upfirdn2d

  def forward(self, x):
    return self.upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
  """upfirdn2d with up = down = 1; the kernel is scaled by factor^2 when used after an upsample."""

  def __init__(self, kernel, pad, upsample_factor=1):
    super().__init__()
    k = make_kernel(kernel)
    if upsample_factor > 1:
      k = k * upsample_factor ** 2
    self.register_buffer("kernel", k)
    self.pad = tuple(pad)
    self.upfirdn2d = upfirdn2d

  def forward(self, x):
    return self.upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
  """Conv with W ~ N(0,1) scaled by 1/sqrt(in*k^2) at runtime; optional zero-init bias."""

  def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
    self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
    self.stride = stride
    self.padding = padding
    self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

  def forward(self, x):
    return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride,
                    padding=self.padding)


class EqualLinear(nn.Module):
  """Linear with W ~ N(0,1)/lr_mul, runtime gains lr_mul/sqrt(in) (weight) and lr_mul (bias)."""

  def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
    self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
    self.activation = activation
    self.scale = (1 / math.sqrt(in_dim)) * lr_mul
    self.lr_mul = lr_mul

  def forward(self, x):
    bias = self.bias * self.lr_mul if self.bias is not None else None
    if self.activation:
      return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
    return F.linear(x, self.weight * self.scale, bias=bias)


# ---------------------------------------------------------------------------------------------------
# Synthesis layers (§2)


class ModulatedConv2d(nn.Module):
  """Modulated conv; upsample = transposed conv (stride 2) + blur. `fused` (rosinality's default):
  per-sample weights, one batch-grouped conv; `fused=False`: rosinality's equal non-fused path."""

  def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
               upsample=False, downsample=False, blur_kernel=(1, 3, 3, 1), fused=True):
    super().__init__()
    self.fused = fused
    self.eps = 1e-8
    self.kernel_size = kernel_size
    self.in_channel = in_channel
    self.out_channel = out_channel
    self.upsample = upsample
    self.downsample = downsample
    self.demodulate = demodulate
    if upsample:
      factor = 2
      p = (len(blur_kernel) - factor) - (kernel_size - 1)
      self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                       upsample_factor=factor)
    if downsample:
      factor = 2
      p = (len(blur_kernel) - factor) + (kernel_size - 1)
      self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
    self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
    self.padding = kernel_size // 2
    self.weight = nn.Parameter(
        torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
    self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

  def forward(self, x, style):
    b, c, h, w = x.shape
    k = self.kernel_size
    if not self.fused:
      return self._forward_nonfused(x, style)
    s = self.modulation(style).view(b, 1, c, 1, 1)
    weight = self.scale * self.weight * s  # [B, out, in, k, k]
    if self.demodulate:
      d = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
      weight = weight * d.view(b, self.out_channel, 1, 1, 1)
    xg = x.reshape(1, b * c, h, w)
    if self.upsample:
      wt = weight.transpose(1, 2).reshape(b * c, self.out_channel, k, k)  # [B*in, out, k, k]
      out = F.conv_transpose2d(xg, wt, stride=2, padding=0, groups=b)
      out = out.reshape(b, self.out_channel, out.shape[2], out.shape[3])
      return self.blur(out)
    wg = weight.reshape(b * self.out_channel, c, k, k)
    if self.downsample:
      xb = self.blur(x)
      xg = xb.reshape(1, b * c, xb.shape[2], xb.shape[3])
      out = F.conv2d(xg, wg, stride=2, padding=0, groups=b)
    else:
      out = F.conv2d(xg, wg, padding=self.padding, groups=b)
    return out.reshape(b, self.out_channel, out.shape[2], out.shape[3])

  def _forward_nonfused(self, x, style):
    """rosinality's `fused=False` path: x * s -> one dense conv (shared weight) -> * d."""
    b, c = x.shape[:2]
    weight = self.scale * self.weight.squeeze(0)  # [out, in, k, k]
    s = self.modulation(style)
    x = x * s.view(b, c, 1, 1)
    if self.upsample:
      out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0))
    elif self.downsample:
      out = F.conv2d(self.blur(x), weight, stride=2, padding=0)
    else:
      out = F.conv2d(x, weight, padding=self.padding)
    if self.demodulate:
      d = torch.rsqrt((weight[None] * s.view(b, 1, c, 1, 1)).pow(2).sum([2, 3, 4]) + self.eps)
      out = out * d.view(b, self.out_channel, 1, 1)
    return out


class NoiseInjection(nn.Module):
  """x + w * noise, scalar w (init 0); fresh N(0,1) noise [B,1,H,W] when not given."""

  def __init__(self):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(1))

  def forward(self, image, noise=None):
    if noise is None:
      b, _, h, w = image.shape
      noise = image.new_empty(b, 1, h, w).normal_()
    return image + self.weight * noise


class ConstantInput(nn.Module):
  """Learned [1, C, size, size] constant repeated over the batch."""

  def __init__(self, channel, size=4):
    super().__init__()
    self.input = nn.Parameter(torch.randn(1, channel, size, size))

  def forward(self, x):
    return self.input.repeat(x.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
  """ModulatedConv2d -> +noise -> +bias, lrelu, x sqrt(2)."""

  def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
               blur_kernel=(1, 3, 3, 1), demodulate=True, fused=True):
    super().__init__()
    self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel,
                                fused=fused)
    self.noise = NoiseInjection()
    self.activate = FusedLeakyReLU(out_channel)

  def forward(self, x, style, noise=None):
    return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
  """1x1 modulated conv to RGB without demodulation, + bias, + upsampled skip."""

  def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1), fused=True):
    super().__init__()
    if upsample:
      self.upsample = Upsample(blur_kernel)
    self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, fused=fused)
    self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

  def forward(self, x, style, skip=None):
    out = self.conv(x, style) + self.bias
    if skip is not None:
      out = out + self.upsample(skip)
    return out


def stylegan2_channels(size, channel_multiplier=2, channel_base=None, channel_max=512):
  """channels[res] = min(base // res, channel_max) for res = 4..size, base = 16384*cm by default."""
  base = 16384 * channel_multiplier if channel_base is None else channel_base
  out = {}
  res = 4
  while res <= size:
    out[res] = min(base // res, channel_max)
    res *= 2
  return out


# ---------------------------------------------------------------------------------------------------
# Generator (§3)


class Generator(nn.Module):
  """rosinality Generator plus Labels4Free's ``back`` flag; forward returns (image, features)."""

  def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
               lr_mlp=0.01, channel_base=None, channel_max=512, fused_modconv=True):
    super().__init__()
    self.size = size
    fz = dict(fused=fused_modconv)
    self.style_dim = style_dim
    layers = [PixelNorm()]
    for _ in range(n_mlp):
      layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
    self.style = nn.Sequential(*layers)
    self.channels = stylegan2_channels(size, channel_multiplier, channel_base, channel_max)
    ch = self.channels
    self.input = ConstantInput(ch[4])
    self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel, **fz)
    self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False, **fz)
    self.log_size = int(math.log2(size))
    assert 2 ** self.log_size == size and size >= 8
    self.num_layers = (self.log_size - 2) * 2 + 1
    self.convs = nn.ModuleList()
    self.upsamples = nn.ModuleList()
    self.to_rgbs = nn.ModuleList()
    self.noises = nn.Module()
    for j in range(self.num_layers):
      r = 2 ** ((j + 5) // 2)
      self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, r, r))
    in_ch = ch[4]
    for i in range(3, self.log_size + 1):
      out_ch = ch[2 ** i]
      self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True,
                                   blur_kernel=blur_kernel, **fz))
      self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel, **fz))
      self.to_rgbs.append(ToRGB(out_ch, style_dim, **fz))
      in_ch = out_ch
    self.n_latent = self.log_size * 2 - 2

  def _dtype(self):
    return self.input.input.dtype

  def mean_latent(self, n_latent):
    """Mean of style(randn(n, style_dim)), shape [1, style_dim] (global torch RNG)."""
    z = torch.randn(n_latent, self.style_dim, device=self.input.input.device, dtype=self._dtype())
    return self.style(z).mean(0, keepdim=True)

  def get_latent(self, z):
    return self.style(z)

  def make_noise(self, batch=1, generator=None):
    """Fresh noise list in rosinality order: [batch,1,r_j,r_j], r_j = 4, 8, 8, 16, 16, ..."""
    return [torch.randn(batch, 1, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2), generator=generator,
                        dtype=self._dtype()) for j in range(self.num_layers)]

  def forward(self, styles, noise=None, input_is_latent=False, truncation=1.0,
              truncation_latent=None, randomize_noise=True, back=False, background_mode="auto"):
    """Returns (image NCHW, post-activation outputs of every StyledConv [conv1, convs.0, ...])."""
    if len(styles) != 1:
      raise NotImplementedError("style mixing is not supported by the reference")
    if not input_is_latent:
      styles = [self.style(s) for s in styles]
    if noise is None:
      if randomize_noise:
        noise = [None] * self.num_layers
      else:
        noise = [getattr(self.noises, f"noise_{j}") for j in range(self.num_layers)]
    if truncation < 1:
      styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
    latent = styles[0]
    if latent.ndim < 3:
      latent = latent.unsqueeze(1).repeat(1, self.n_latent, 1)

    if background_mode == "auto":
      background_mode = "input" if self.size == 512 else "conv1"
    if background_mode not in ("input", "conv1"):
      raise ValueError(f"unknown background_mode {background_mode!r}")

    features = []
    out = self.input(latent)
    if back and background_mode == "input":
      out = out * 0
    out = self.conv1(out, latent[:, 0], noise=noise[0])
    if back and background_mode == "conv1":
      out = out * 0
    features.append(out)
    skip = self.to_rgb1(out, latent[:, 1])
    i = 1
    for conv_up, conv, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                     noise[2::2], self.to_rgbs):
      out = conv_up(out, latent[:, i], noise=noise1)
      features.append(out)
      out = conv(out, latent[:, i + 1], noise=noise2)
      features.append(out)
      skip = to_rgb(out, latent[:, i + 2], skip)
      i += 2
    return skip, features


# ---------------------------------------------------------------------------------------------------
# Discriminator (§4)


class ConvLayer(nn.Sequential):
  """[Blur,] EqualConv2d [, FusedLeakyReLU] as an nn.Sequential (rosinality key indices)."""

  def __init__(self, in_channel, out_channel, kernel_size, downsample=False,
               blur_kernel=(1, 3, 3, 1), bias=True, activate=True):
    layers = []
    if downsample:
      factor = 2
      p = (len(blur_kernel) - factor) + (kernel_size - 1)
      layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
      stride, padding = 2, 0
    else:
      stride, padding = 1, kernel_size // 2
    layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                              bias=bias and not activate))
    if activate:
      layers.append(FusedLeakyReLU(out_channel, bias=bias))
    super().__init__(*layers)


class ResBlock(nn.Module):
  """(conv2(conv1(x)) + skip(x)) / sqrt(2), halving the resolution."""

  def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1)):
    super().__init__()
    self.conv1 = ConvLayer(in_channel, in_channel, 3)
    self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
    self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                          blur_kernel=blur_kernel)

  def forward(self, x):
    return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
  """rosinality residual D with strided minibatch-stddev groups of min(B, stddev_group)."""

  def __init__(self, size, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), channel_base=None,
               channel_max=512, stddev_group=4):
    super().__init__()
    self.channels = stylegan2_channels(size, channel_multiplier, channel_base, channel_max)
    ch = self.channels
    convs = [ConvLayer(3, ch[size], 1)]
    log_size = int(math.log2(size))
    in_ch = ch[size]
    for i in range(log_size, 2, -1):
      out_ch = ch[2 ** (i - 1)]
      convs.append(ResBlock(in_ch, out_ch, blur_kernel))
      in_ch = out_ch
    self.convs = nn.Sequential(*convs)
    self.stddev_group = stddev_group
    self.stddev_feat = 1
    self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
    self.final_linear = nn.Sequential(
        EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
        EqualLinear(ch[4], 1),
    )

  def forward(self, x):
    out = self.convs(x)
    b, c, h, w = out.shape
    group = min(b, self.stddev_group)
    if b % group:
      raise ValueError(f"batch {b} not divisible by stddev group {group}")
    f = self.stddev_feat
    sd = out.view(group, -1, f, c // f, h, w)  # sample g*(B/G)+m is in column m
    sd = torch.sqrt(sd.var(0, unbiased=False) + 1e-8)
    sd = sd.mean([2, 3, 4], keepdim=True).squeeze(2)  # [B/G, f, 1, 1]
    sd = sd.repeat(group, 1, h, w)
    out = torch.cat([out, sd], 1)
    out = self.final_conv(out)
    out = out.view(b, -1)
    return self.final_linear(out)


# ---------------------------------------------------------------------------------------------------
# Training losses and optimisers (rosinality/stylegan2-pytorch, train.py)


def d_logistic_loss(real_pred, fake_pred):
  """Non-saturating D loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
  return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred):
  """Non-saturating G loss: mean softplus(-D(G(z)))."""
  return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred, real_img):
  """R1 penalty: mean over the batch of sum_{c,h,w} (d sum_b D(real) / d real)^2.

  `real_img` must require grad and `real_pred` be computed from it; the graph is kept (create_graph)
  so that the penalty can be backpropagated into D's parameters.
  """
  (grad,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
  return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def g_path_regularize(fake_img, latents, mean_path_length, decay=0.01, noise=None):
  """Path-length regulariser. Returns (penalty, new mean path length (detached), path lengths).

  y = noise / sqrt(H W) with noise ~ N(0, 1) shaped like the image (pass `noise` to fix it);
  J^T y = d sum(fake_img * y) / d latents (latents: w+ [B, n_latent, style_dim], graph kept);
  length_b = sqrt(mean over layers of sum over style_dim of (J^T y)^2);
  a = m + decay (mean_b length - m)  (m = mean_path_length);
  penalty = mean_b (length_b - a)^2, with a NOT detached inside the penalty (the gradient also
  flows through mean_b length).
  """
  if noise is None:
    noise = torch.randn_like(fake_img)
  noise = noise / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
  (grad,) = torch.autograd.grad(outputs=(fake_img * noise).sum(), inputs=latents,
                                create_graph=True)
  path_lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
  path_mean = mean_path_length + decay * (path_lengths.mean() - mean_path_length)
  path_penalty = (path_lengths - path_mean).pow(2).mean()
  return path_penalty, path_mean.detach(), path_lengths


def lazy_adam(params, lr, reg_every):
  """Adam with the lazy-regularisation scaling c = k/(k+1): lr c, betas (0, 0.99 ** c), eps 1e-8."""
  c = reg_every / (reg_every + 1)
  return torch.optim.Adam(params, lr=lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)


def make_gan_optimizers(generator, discriminator, lr=0.002, g_reg_every=4, d_reg_every=16):
  """(g_optim, d_optim): lazy-regularisation Adam for G (k = g_reg_every) and D (k = d_reg_every)."""
  return (lazy_adam(generator.parameters(), lr, g_reg_every),
          lazy_adam(discriminator.parameters(), lr, d_reg_every))


# ---------------------------------------------------------------------------------------------------
# Test helpers


_CONSTANT_INIT_SUFFIXES = ("bias", "noise.weight")


@torch.no_grad()
def perturb_(module, seed, std=0.1):
  """Moves every constant-initialised parameter (biases, modulation biases, noise weights) by
  std*N(0,1) and refills noise buffers (``noises.*``) with N(0,1), from torch.Generator(seed)."""
  gen = torch.Generator().manual_seed(seed)
  for name, p in module.named_parameters():
    if name.endswith(_CONSTANT_INIT_SUFFIXES):
      p.add_(std * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
  for name, buf in module.named_buffers():
    if name.startswith("noises.") or ".noises." in name:
      buf.copy_(torch.randn(buf.shape, generator=gen, dtype=torch.float64).to(buf))
  return module


def make_rosinality_checkpoint(path, size, channel_multiplier=2, style_dim=512, n_mlp=8,
                               channel_base=None, channel_max=512, seed=0, with_g=True,
                               with_d=True, extra=None):
  """Writes a rosinality-style checkpoint {'g_ema', 'g', 'd', 'latent_avg'} (+ extra) via torch.save.

  Returns a dict with the modules under the same keys ('g_ema', 'g', 'd'; absent when not built).
  Construction is seeded and does not disturb the global torch RNG.
  """
  ckpt, mods = {}, {}
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    if with_g:
      kw = dict(style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=channel_multiplier,
                channel_base=channel_base, channel_max=channel_max)
      g_ema = perturb_(Generator(size, **kw), seed)
      g = Generator(size, **kw)
      g.load_state_dict(g_ema.state_dict())
      perturb_(g, seed + 7919)
      with torch.no_grad():
        latent_avg = g_ema.mean_latent(256)[0].clone()
      ckpt.update(g_ema=g_ema.state_dict(), g=g.state_dict(), latent_avg=latent_avg)
      mods.update(g_ema=g_ema, g=g)
    if with_d:
      d = perturb_(Discriminator(size, channel_multiplier=channel_multiplier,
                                 channel_base=channel_base, channel_max=channel_max), seed + 104729)
      ckpt["d"] = d.state_dict()
      mods["d"] = d
  if extra:
    ckpt.update(extra)
  torch.save(ckpt, path)
  return mods
