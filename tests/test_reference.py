"""Self-checks of the independent torch/NumPy references in l4f_jax/reference (fast, CPU)."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from l4f_jax.reference import torch_labels4free as l4f
from l4f_jax.reference import torch_stylegan2 as sg
from l4f_jax.reference.numpy_upfirdn2d import upfirdn2d_np


def _nparams(m):
  return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------
# upfirdn2d


# (up, down, pad, kernel gain): spec §1 table, plus down-sampling, cropping and combined cases.
UPFIRDN_CASES = [
    (2, 1, (2, 1), 4.0),  # ToRGB skip Upsample
    (1, 1, (1, 1), 4.0),  # blur after the modulated transposed conv
    (1, 1, (2, 2), 1.0),  # D blur before a 3x3 stride-2 conv
    (1, 1, (1, 1), 1.0),  # D blur before a 1x1 stride-2 skip
    (1, 2, (1, 1), 1.0),
    (2, 2, (1, 2), 1.0),
    (1, 1, (-1, 2), 1.0),
    (2, 1, (0, 0, 1, -2), 1.0),
]


@pytest.mark.parametrize("up,down,pad,gain", UPFIRDN_CASES)
@pytest.mark.parametrize("asymmetric", [False, True])
def test_upfirdn2d_numpy_matches_torch(up, down, pad, gain, asymmetric):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 7, 6))
  k = rng.standard_normal((4, 3)) if asymmetric else sg.make_kernel([1, 3, 3, 1]).double().numpy()
  k = k * gain
  ref = upfirdn2d_np(x, k, up=up, down=down, pad=pad)
  out = sg.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad).numpy()
  assert out.shape == ref.shape
  x0, x1, y0, y1 = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
  assert ref.shape[2] == (7 * up + y0 + y1 - k.shape[0] + down) // down
  assert ref.shape[3] == (6 * up + x0 + x1 - k.shape[1] + down) // down
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("up,down,pad,gain", UPFIRDN_CASES)
def test_upfirdn2d_depthwise_matches_numpy(up, down, pad, gain):
  """The lean torch reference's upfirdn2d (one channel-grouped conv) against the NumPy one."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 3, 7, 6))
  k = rng.standard_normal((4, 3)) * gain
  ref = upfirdn2d_np(x, k, up=up, down=down, pad=pad)
  out = sg.upfirdn2d_depthwise(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down,
                               pad=pad).numpy()
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_upfirdn2d_numpy_is_true_convolution():
  """Full padding + separable kernel = np.convolve 'full' along both axes (orientation check)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 1, 5, 6))
  a, b = np.array([1.0, 2.0, -1.0, 0.5]), np.array([0.3, -2.0, 1.0])
  k = np.outer(a, b)  # rows ~ a (H), columns ~ b (W)
  out = upfirdn2d_np(x, k, pad=(2, 2, 3, 3))[0, 0]
  rows = np.stack([np.convolve(r, b, "full") for r in x[0, 0]])
  want = np.stack([np.convolve(col, a, "full") for col in rows.T]).T
  np.testing.assert_allclose(out, want, atol=1e-12)
  # Zero insertion appends up-1 zeros after every sample: up=2 with a 1x1 kernel.
  z = upfirdn2d_np(x, np.ones((1, 1)), up=2)[0, 0]
  assert z.shape == (10, 12)
  np.testing.assert_array_equal(z[::2, ::2], x[0, 0])
  assert not z[1::2].any() and not z[:, 1::2].any()


# ---------------------------------------------------------------------------------------------------
# Parameter counts and state-dict layout (spec §5)


@pytest.mark.parametrize("size,g_params,g_tensors,g_buffers,d_params,d_tensors,d_buffers", [
    (256, 30_034_338, 110, 25, 28_864_129, 38, 12),
    (512, 30_276_583, 124, 29, 28_982_849, 43, 14),
    (1024, 30_370_060, 138, 33, 29_012_513, 48, 16),
])
def test_param_counts_config_f(size, g_params, g_tensors, g_buffers, d_params, d_tensors,
                               d_buffers):
  with torch.device("meta"):
    g, d = sg.Generator(size), sg.Discriminator(size)
  assert _nparams(g) == g_params
  assert _nparams(g.style) == 2_101_248
  assert len(list(g.parameters())) == g_tensors and len(list(g.buffers())) == g_buffers
  assert _nparams(d) == d_params
  assert len(list(d.parameters())) == d_tensors and len(list(d.buffers())) == d_buffers
  assert g.n_latent == 2 * int(math.log2(size)) - 2
  assert g.num_layers == 2 * int(math.log2(size)) - 3


def _expected_g_keys(size, ch, sd=512, n_mlp=8):
  keys = {}
  for i in range(1, n_mlp + 1):
    keys[f"style.{i}.weight"] = (sd, sd)
    keys[f"style.{i}.bias"] = (sd,)
  c4 = ch[4]
  keys["input.input"] = (1, c4, 4, 4)
  keys.update({"conv1.conv.weight": (1, c4, c4, 3, 3), "conv1.conv.modulation.weight": (c4, sd),
               "conv1.conv.modulation.bias": (c4,), "conv1.noise.weight": (1,),
               "conv1.activate.bias": (c4,), "to_rgb1.conv.weight": (1, 3, c4, 1, 1),
               "to_rgb1.conv.modulation.weight": (c4, sd), "to_rgb1.conv.modulation.bias": (c4,),
               "to_rgb1.bias": (1, 3, 1, 1)})
  L = int(math.log2(size))
  for k in range(L - 2):
    r = 2 ** (k + 3)
    ci, co = ch[r // 2], ch[r]
    a, b = f"convs.{2 * k}", f"convs.{2 * k + 1}"
    keys.update({f"{a}.conv.weight": (1, co, ci, 3, 3), f"{a}.conv.modulation.weight": (ci, sd),
                 f"{a}.conv.modulation.bias": (ci,), f"{a}.noise.weight": (1,),
                 f"{a}.activate.bias": (co,), f"{a}.conv.blur.kernel": (4, 4),
                 f"{b}.conv.weight": (1, co, co, 3, 3), f"{b}.conv.modulation.weight": (co, sd),
                 f"{b}.conv.modulation.bias": (co,), f"{b}.noise.weight": (1,),
                 f"{b}.activate.bias": (co,),
                 f"to_rgbs.{k}.conv.weight": (1, 3, co, 1, 1),
                 f"to_rgbs.{k}.conv.modulation.weight": (co, sd),
                 f"to_rgbs.{k}.conv.modulation.bias": (co,), f"to_rgbs.{k}.bias": (1, 3, 1, 1),
                 f"to_rgbs.{k}.upsample.kernel": (4, 4)})
  for j in range(2 * L - 3):
    r = 2 ** ((j + 5) // 2)
    keys[f"noises.noise_{j}"] = (1, 1, r, r)
  return keys


def _expected_d_keys(size, ch):
  keys = {"convs.0.0.weight": (ch[size], 3, 1, 1), "convs.0.1.bias": (ch[size],)}
  L = int(math.log2(size))
  for n in range(1, L - 1):
    ci, co = ch[size // 2 ** (n - 1)], ch[size // 2 ** n]
    p = f"convs.{n}"
    keys.update({f"{p}.conv1.0.weight": (ci, ci, 3, 3), f"{p}.conv1.1.bias": (ci,),
                 f"{p}.conv2.0.kernel": (4, 4), f"{p}.conv2.1.weight": (co, ci, 3, 3),
                 f"{p}.conv2.2.bias": (co,), f"{p}.skip.0.kernel": (4, 4),
                 f"{p}.skip.1.weight": (co, ci, 1, 1)})
  c4 = ch[4]
  keys.update({"final_conv.0.weight": (c4, c4 + 1, 3, 3), "final_conv.1.bias": (c4,),
               "final_linear.0.weight": (c4, c4 * 16), "final_linear.0.bias": (c4,),
               "final_linear.1.weight": (1, c4), "final_linear.1.bias": (1,)})
  return keys


def _shapes(module):
  return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_layout_256():
  with torch.device("meta"):
    g, d = sg.Generator(256), sg.Discriminator(256)
  ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
  assert g.channels == ch and d.channels == ch
  assert _shapes(g) == _expected_g_keys(256, ch)
  assert _shapes(d) == _expected_d_keys(256, ch)
  assert _shapes(g)["convs.10.conv.weight"] == (1, 128, 256, 3, 3)
  assert _shapes(d)["final_linear.0.weight"] == (512, 8192)
  assert [(k, v.shape[0]) for k, v in d.convs[1].conv2[1].state_dict().items()] == [("weight", 256)]


def test_state_dict_layout_custom_widths():
  ch = sg.stylegan2_channels(32, channel_base=512, channel_max=64)
  assert ch == {4: 64, 8: 64, 16: 32, 32: 16}
  with torch.device("meta"):
    g = sg.Generator(32, style_dim=16, n_mlp=2, channel_base=512, channel_max=64)
    d = sg.Discriminator(32, channel_base=512, channel_max=64)
  assert _shapes(g) == _expected_g_keys(32, ch, sd=16, n_mlp=2)
  assert _shapes(d) == _expected_d_keys(32, ch)
  assert sg.stylegan2_channels(1024, channel_multiplier=1)[64] == 256


def test_buffers_values():
  g = sg.Generator(16, style_dim=8, n_mlp=1, channel_max=8)
  d = sg.Discriminator(16, channel_max=8)
  k1 = sg.make_kernel([1, 3, 3, 1])
  torch.testing.assert_close(k1 * 64, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])))
  torch.testing.assert_close(g.convs[0].conv.blur.kernel, 4 * k1)
  torch.testing.assert_close(g.to_rgbs[0].upsample.kernel, 4 * k1)
  torch.testing.assert_close(d.convs[1].conv2[0].kernel, k1)
  assert g.convs[0].conv.blur.pad == (1, 1) and g.to_rgbs[0].upsample.pad == (2, 1)
  assert d.convs[1].conv2[0].pad == (2, 2) and d.convs[1].skip[0].pad == (1, 1)
  assert float(g.conv1.conv.modulation.bias.detach().min()) == 1.0


# ---------------------------------------------------------------------------------------------------
# Alpha network (RameenAbdal/Labels4Free, model_new.py: bg_extractor_repro)


def _official_repro_names():
  return ([f"conv{i}" for i in range(1, 13)] + ["conv_next", "conv_next2", "conv_next3",
                                                "conv_next4", "conv_n"])


@pytest.mark.parametrize("size,count", [(256, 14_947), (512, 12_259), (1024, 9_379)])
def test_alpha_param_counts(size, count):
  ch = sg.stylegan2_channels(size, 2)
  a, b = l4f.BgExtractorRepro(size, ch), l4f.BgExtractor(size, ch)
  assert _nparams(a) == count and _nparams(b) == count
  names = sorted({k.rsplit(".", 1)[0] for k in a.state_dict()})
  assert names == sorted(_official_repro_names())
  assert a.min_res == size // 32
  mapped = {l4f.repro_to_nonrepro_key(k): v for k, v in a.state_dict().items()}
  b.load_state_dict(mapped)  # strict: key sets and shapes agree


def test_alpha_small_sizes_and_forward():
  torch.manual_seed(0)
  for size, n, min_res in [(16, 2, 8), (32, 3, 8), (64, 4, 8), (128, 5, 8), (256, 6, 8)]:
    assert l4f.alpha_levels(size) == (n, min_res)
  size = 64
  g = sg.Generator(size, style_dim=16, n_mlp=2, channel_base=1024, channel_max=32).double()
  a = l4f.BgExtractorRepro(size, g.channels).double()
  b = l4f.BgExtractor(size, g.channels).double()
  b.load_state_dict({l4f.repro_to_nonrepro_key(k): v for k, v in a.state_dict().items()})
  img, feats = g([torch.randn(2, 16, dtype=torch.float64)])
  assert img.shape == (2, 3, size, size) and len(feats) == 2 * 6 - 3
  sel = l4f.select_features(feats, size)
  assert [f.shape[-1] for f in sel] == [8, 8, 16, 16, 32, 32, 64, 64]
  assert sel[0] is feats[1] and sel[-1] is feats[-1]
  with torch.no_grad():
    alpha = a(sel)
  assert alpha.shape == (2, 1, size, size) and 0 < float(alpha.min()) and float(alpha.max()) < 1
  torch.testing.assert_close(b(sel), alpha, rtol=0, atol=0)
  # Manual forward for n = 4 (current level first, upsampled previous second; final add).
  up = lambda t, r: F.interpolate(t, size=(r, r), mode="bicubic", align_corners=True)
  p = [torch.cat([getattr(a, f"conv{2 * k + 1}")(sel[2 * k]), getattr(a, f"conv{2 * k + 2}")(sel[2 * k + 1])], 1)
       for k in range(4)]
  x = up(p[0], 16)
  x = up(F.leaky_relu(a.conv_next(torch.cat([p[1], x], 1)), 0.2), 32)
  x = up(F.leaky_relu(a.conv_next2(torch.cat([p[2], x], 1)), 0.2), 64)
  torch.testing.assert_close(torch.sigmoid(a.conv_n(p[3] + x)), alpha, rtol=0, atol=1e-15)
  # 1024 config-f selects convs.4 .. convs.15 (features[5 .. 16]).
  assert l4f.select_features(list(range(17)), 1024) == list(range(5, 17))
  assert l4f.select_features(list(range(15)), 512) == list(range(3, 15))


# ---------------------------------------------------------------------------------------------------
# Modulated convolution vs a direct non-fused formula


def _direct_modconv(m, x, style):
  """x*s -> conv with scale*W (transposed stride 2 + blur when upsampling) -> *d."""
  s = m.modulation(style)  # [B, in]
  w = m.scale * m.weight[0]  # [out, in, k, k]
  y = x * s[:, :, None, None]
  if m.upsample:
    y = F.conv_transpose2d(y, w.transpose(0, 1), stride=2)
  else:
    y = F.conv2d(y, w, padding=m.kernel_size // 2)
  if m.demodulate:
    d = torch.rsqrt((w[None] * s[:, None, :, None, None]).pow(2).sum([2, 3, 4]) + 1e-8)
    y = y * d[:, :, None, None]
  if m.upsample:
    y = sg.upfirdn2d(y, m.blur.kernel, pad=(1, 1))
  return y


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("k,upsample,demod", [(3, False, True), (3, True, True), (1, False, False)])
def test_fused_modconv_matches_direct(dtype, tol, k, upsample, demod):
  torch.manual_seed(0)
  m = sg.ModulatedConv2d(6, 5, k, 8, demodulate=demod, upsample=upsample).to(dtype)
  sg.perturb_(m, 1)
  x = torch.randn(3, 6, 8, 8, dtype=dtype)
  style = torch.randn(3, 8, dtype=dtype)
  out = m(x, style)
  assert out.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
  ref = _direct_modconv(m, x, style)
  out, ref = out.detach(), ref.detach()
  assert float((out - ref).abs().max()) <= tol * max(1.0, float(ref.abs().max()))


# ---------------------------------------------------------------------------------------------------
# Generator / Discriminator behaviour (small configs)


def _small_g(size=16, **kw):
  return sg.Generator(size, style_dim=8, n_mlp=2, channel_base=256, channel_max=16, **kw)


def test_generator_noise_truncation_background():
  torch.manual_seed(0)
  g = sg.perturb_(_small_g(16), 3).double()
  z = torch.randn(2, 8, dtype=torch.float64)
  noise = g.make_noise(2)
  noise = [n.double() for n in noise]
  a, fa = g([z], noise=noise)
  b, _ = g([z], noise=noise)
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert len(fa) == 5 and [f.shape[-1] for f in fa] == [4, 8, 8, 16, 16]
  c, _ = g([z], randomize_noise=False)
  stored = [getattr(g.noises, f"noise_{j}") for j in range(g.num_layers)]
  torch.testing.assert_close(c, g([z], noise=stored)[0], rtol=0, atol=0)
  # truncation = 1 is a no-op; w+ input equals repeated w.
  w = g.style(z)
  wbar = g.mean_latent(64)
  torch.testing.assert_close(g([z], noise=noise, truncation=1.0, truncation_latent=wbar)[0], a)
  t, _ = g([z], noise=noise, truncation=0.5, truncation_latent=wbar)
  wt = wbar + 0.5 * (w - wbar)
  torch.testing.assert_close(g([wt.unsqueeze(1).repeat(1, g.n_latent, 1)], noise=noise,
                               input_is_latent=True)[0], t, rtol=0, atol=1e-14)
  # back=True, "conv1": 4x4 features zero, to_rgb1 = bias.
  bg, fb = g([z], noise=noise, back=True)
  assert not fb[0].any()
  # back=True, "input": conv1 output = sqrt2 * lrelu(bias + w_noise * noise).
  _, fi = g([z], noise=noise, back=True, background_mode="input")
  want = sg.fused_leaky_relu(g.conv1.noise.weight * noise[0].expand(2, 1, 4, 4),
                             g.conv1.activate.bias)
  torch.testing.assert_close(fi[0], want.expand_as(fi[0]), rtol=0, atol=1e-14)
  assert not torch.equal(bg, a)


def test_nonfused_generator_matches_fused_float64():
  """rosinality's non-fused path (the benchmark's second torch reference) equals the fused one:
  same state_dict, images and features to 1e-12 in float64 (and it is a different computation)."""
  torch.manual_seed(0)
  g = sg.perturb_(_small_g(16), 3).double()
  g_nf = _small_g(16, fused_modconv=False)
  g_nf.load_state_dict(g.state_dict())
  g_nf = g_nf.double()
  assert not g_nf.conv1.conv.fused and g.conv1.conv.fused
  z = torch.randn(2, 8, dtype=torch.float64)
  noise = [n.double() for n in g.make_noise(2)]
  with torch.no_grad():
    (a, fa), (b, fb) = g([z], noise=noise), g_nf([z], noise=noise)
  torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
  for x, y in zip(fa, fb):
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
  assert a.abs().max() > 0.1


def test_depthwise_upfirdn_models_match_native_float64():
  """G (non-fused) and D with every Blur / Upsample switched to the depthwise upfirdn2d (the
  benchmark's lean torch reference) equal the native ones to 1e-12 in float64, forward and D's
  input gradient."""
  torch.manual_seed(0)
  g = sg.perturb_(_small_g(16, fused_modconv=False), 3).double()
  g_dw = _small_g(16, fused_modconv=False)
  g_dw.load_state_dict(g.state_dict())
  g_dw = sg.use_upfirdn2d(g_dw.double(), "depthwise")
  switched = [m for m in g_dw.modules() if getattr(m, "upfirdn2d", None) is sg.upfirdn2d_depthwise]
  assert switched
  z = torch.randn(2, 8, dtype=torch.float64)
  noise = [n.double() for n in g.make_noise(2)]
  with torch.no_grad():
    (a, _), (b, _) = g([z], noise=noise), g_dw([z], noise=noise)
  torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
  assert a.abs().max() > 0.1
  d = sg.perturb_(sg.Discriminator(16, channel_base=256, channel_max=16), 5).double()
  d_dw = sg.Discriminator(16, channel_base=256, channel_max=16)
  d_dw.load_state_dict(d.state_dict())
  d_dw = sg.use_upfirdn2d(d_dw.double(), "depthwise")
  x = torch.randn(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
  (gx,) = torch.autograd.grad(d(x).sum(), x)
  (gx_dw,) = torch.autograd.grad(d_dw(x).sum(), x)
  torch.testing.assert_close(d_dw(x), d(x), rtol=0, atol=1e-12)
  torch.testing.assert_close(gx_dw, gx, rtol=0, atol=1e-12)
  with pytest.raises(ValueError):
    sg.use_upfirdn2d(d_dw, "fast")


def test_discriminator_stddev_groups():
  torch.manual_seed(0)
  d = sg.perturb_(sg.Discriminator(16, channel_base=256, channel_max=16), 5).double()
  x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
  out = d(x)
  assert out.shape == (8, 1)
  # groups of 4 are strided: {0, 2, 4, 6} and {1, 3, 5, 7}; swapping 0 <-> 2 permutes only.
  perm = [2, 1, 0, 3, 4, 5, 6, 7]
  torch.testing.assert_close(d(x[perm]), out[perm], rtol=0, atol=1e-14)
  perm = [1, 0, 2, 3, 4, 5, 6, 7]
  assert float((d(x[perm]) - out[perm]).abs().max().detach()) > 1e-10
  d2 = sg.Discriminator(16, channel_base=256, channel_max=16, stddev_group=2).double()
  d2.load_state_dict(d.state_dict())
  assert not torch.allclose(d2(x), out)


def test_checkpoint_roundtrip(tmp_path):
  path = tmp_path / "ck.pt"
  mods = sg.make_rosinality_checkpoint(path, 16, style_dim=8, n_mlp=2, channel_base=256,
                                       channel_max=16, seed=3)
  ck = torch.load(path, weights_only=True)
  assert set(ck) == {"g_ema", "g", "d", "latent_avg"}
  assert ck["latent_avg"].shape == (8,)
  assert float(ck["g_ema"]["conv1.noise.weight"].abs()) > 0
  assert not torch.equal(ck["g"]["conv1.activate.bias"], ck["g_ema"]["conv1.activate.bias"])
  torch.testing.assert_close(ck["d"]["convs.0.1.bias"], mods["d"].convs[0][1].bias)
  mods2 = sg.make_rosinality_checkpoint(tmp_path / "ck2.pt", 16, style_dim=8, n_mlp=2,
                                        channel_base=256, channel_max=16, seed=3, with_d=False,
                                        extra={"note": torch.zeros(1)})
  assert "d" not in mods2
  ck2 = torch.load(tmp_path / "ck2.pt", weights_only=True)
  for k, v in ck["g_ema"].items():
    torch.testing.assert_close(ck2["g_ema"][k], v, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Losses and the official iteration


def test_alpha_loss_terms():
  alpha = torch.tensor([0.1, 0.9, 0.2, 0.3], dtype=torch.float64).view(2, 1, 1, 2)
  pred = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
  total, t = l4f.alpha_loss(pred, alpha, 2.0, 1.5, 0.4, 3.0, 0.8)
  sat = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
  binar = (0.1 + 0.1 + 0.2 + 0.3) / 4
  fg = (max(0.4 - 0.5, 0) + max(0.4 - 0.25, 0)) / 2
  bg = (max(0.8 - 0.5, 0) + max(0.8 - 0.75, 0)) / 2
  for k, v in [("sat", sat), ("binarization", binar), ("fg_coverage", fg), ("bg_coverage", bg)]:
    assert abs(float(t[k]) - v) < 1e-12, k
  assert abs(float(total) - (2 * sat + 1.5 * (binar + fg) + 3 * bg)) < 1e-12


def test_optimizer_hparams():
  a, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
  oa, od = l4f.make_optimizers(a, d, 2e-4)
  assert math.isclose(oa.defaults["lr"], 1.6e-4) and math.isclose(od.defaults["lr"], 2e-4 * 16 / 17)
  assert oa.defaults["betas"][0] == 0 and math.isclose(oa.defaults["betas"][1], 0.9919920, abs_tol=1e-7)
  assert math.isclose(od.defaults["betas"][1], 0.9905855, abs_tol=1e-7) and od.defaults["eps"] == 1e-8


def _iteration_setup(n_devices, seed=0):
  torch.manual_seed(seed)
  size, b = 16, 4
  g = sg.perturb_(_small_g(size), 1).double()
  d = sg.perturb_(sg.Discriminator(size, channel_base=256, channel_max=16), 2).double()
  a = l4f.BgExtractorRepro(size, g.channels).double()
  gen = torch.Generator().manual_seed(seed + 1)
  mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
  inputs = {"z_d": mk(b, 8), "z_a": mk(b, 8)}
  for key in ("noise_fg_d", "noise_bg_d", "noise_fg_a", "noise_bg_a"):
    inputs[key] = [mk(b, 1, n.shape[2], n.shape[3]) for n in g.make_noise(1)]
  real = mk(b, 3, size, size)
  with torch.no_grad():
    wbar = g.mean_latent(128)
  cfg = dict(truncation=0.7, mean_latent=wbar, r1=10.0, d_reg_every=2, r1_quirk_weight=1.0,
             sat_weight=1.0, loss_multiplier=1.2, fg_coverage_value=0.25, bg_coverage_wt=0.5,
             bg_coverage_value=0.75, n_devices=n_devices, return_grads=True)
  return g, d, a, inputs, real, cfg


@pytest.mark.parametrize("n_devices", [1, 2])
def test_official_iteration(n_devices):
  g, d, a, inputs, real, cfg = _iteration_setup(n_devices)
  g_before = {k: v.clone() for k, v in g.state_dict().items()}
  d_before = {k: v.clone() for k, v in d.state_dict().items()}
  oa, od = l4f.make_optimizers(a, d, 2e-3, d_reg_every=cfg["d_reg_every"])
  out = l4f.official_iteration(0, g, a, d, oa, od, real, inputs, cfg)
  for k in ("d_loss", "r1", "r1_loss", "a_loss", "a_sat", "a_binarization", "a_fg_coverage",
            "a_bg_coverage"):
    assert torch.isfinite(out[k]), k
  assert out["alpha_d"].shape == (4, 1, 16, 16) and out["alpha_a"].shape == (4, 1, 16, 16)
  for k, v in g.state_dict().items():
    torch.testing.assert_close(v, g_before[k], rtol=0, atol=0)
  assert any(not torch.equal(v, d_before[k]) for k, v in d.state_dict().items())
  assert all(p.requires_grad for p in d.parameters())
  # Recompute the D-step loss, the R1 loss and the A loss directly from d_before.
  d0 = sg.Discriminator(16, channel_base=256, channel_max=16).double()
  d0.load_state_dict(d_before)
  dd = lambda x: torch.cat([d0(c) for c in x.chunk(n_devices)])
  a_check = l4f.BgExtractorRepro(16, g.channels).double()
  _, _, a_fresh, inputs, real, cfg = _iteration_setup(n_devices)
  a_check.load_state_dict(a_fresh.state_dict())
  with torch.no_grad():
    fg, feats = g([inputs["z_d"]], noise=inputs["noise_fg_d"], truncation=0.7,
                  truncation_latent=cfg["mean_latent"])
    bg, _ = g([inputs["z_d"]], noise=inputs["noise_bg_d"], back=True)
    al = a_check(l4f.select_features(feats, 16))
    xc = al * fg + (1 - al) * bg
    want = F.softplus(-dd(real)).mean() + F.softplus(dd(xc)).mean()
  torch.testing.assert_close(out["alpha_d"], al, rtol=0, atol=1e-14)
  assert abs(float(out["d_loss"] - want)) < 1e-12
  # R1 penalty is computed with the D after its first Adam step; check the quirk sign via grads.
  assert out["r1_quirk"] is not None and out["grads_r1"]["final_linear.1.bias"] is not None


def test_official_iteration_no_r1_and_rosinality_quirk():
  g, d, a, inputs, real, cfg = _iteration_setup(1)
  oa, od = l4f.make_optimizers(a, d, 2e-3, d_reg_every=2)
  out = l4f.official_iteration(1, g, a, d, oa, od, real, inputs, cfg)
  assert out["r1"] is None and "grads_r1" not in out
  # q = 1 vs q = 0 differ only by D(real)[0]: its gradient wrt the final bias is exactly 1.
  res = []
  for q in (1.0, 0.0):
    g, d, a, inputs, real, cfg = _iteration_setup(1)
    cfg["r1_quirk_weight"] = q
    oa, od = l4f.make_optimizers(a, d, 2e-3, d_reg_every=2)
    res.append(l4f.official_iteration(0, g, a, d, oa, od, real, inputs, cfg))
  diff = res[0]["grads_r1"]["final_linear.1.bias"] - res[1]["grads_r1"]["final_linear.1.bias"]
  assert abs(float(diff) - 1.0) < 1e-10
  torch.testing.assert_close(res[0]["d_loss"], res[1]["d_loss"], rtol=0, atol=0)


@pytest.mark.parametrize("n_devices", [1, 2])
def test_official_iteration_values_lr0(n_devices):
  """With lr = 0 nothing moves, so every returned value can be recomputed from the inputs."""
  g, d, a, inputs, real, cfg = _iteration_setup(n_devices)
  oa, od = l4f.make_optimizers(a, d, 0.0, d_reg_every=2)
  out = l4f.official_iteration(0, g, a, d, oa, od, real, inputs, cfg)
  dd = lambda x: torch.cat([d(c) for c in x.chunk(n_devices)])
  with torch.no_grad():
    fg, feats = g([inputs["z_a"]], noise=inputs["noise_fg_a"], truncation=0.7,
                  truncation_latent=cfg["mean_latent"])
    bg, _ = g([inputs["z_a"]], noise=inputs["noise_bg_a"], back=True)
  al = a(l4f.select_features(feats, 16))
  pred = dd(al * fg + (1 - al) * bg)
  area = al.mean((1, 2, 3))
  want = (F.softplus(-pred).mean() + 1.2 * (torch.minimum(al, 1 - al).mean()
          + F.relu(0.25 - area).mean()) + 0.5 * F.relu(0.75 - (1 - area)).mean())
  assert abs(float(out["a_loss"] - want.detach())) < 1e-12
  grads = torch.autograd.grad(want, list(a.parameters()))
  for (k, _), gr in zip(a.named_parameters(), grads):
    torch.testing.assert_close(out["grads_a"][k], gr, rtol=1e-10, atol=1e-14)
  x = real.clone().requires_grad_(True)
  rp = dd(x)
  (gx,) = torch.autograd.grad(rp.sum(), x)
  r1 = gx.pow(2).sum((1, 2, 3)).mean()
  assert abs(float(out["r1"] - r1)) < 1e-10 * max(1.0, float(r1))
  quirk = rp.detach()[:: 4 // n_devices].mean()
  assert abs(float(out["r1_quirk"] - quirk)) < 1e-12
  assert abs(float(out["r1_loss"] - (10.0 / 2 * 2 * r1 + quirk))) < 1e-9 * max(1.0, float(r1))
