"""Pure-torch reference of the official Labels4Free method (RameenAbdal/Labels4Free: model_new.py and train.py), written independently.

Alpha networks with generalised widths, the losses and one explicit-input training iteration
(D step, lazy R1 with the official quirk term, A step) including a DDP emulation for n_devices > 1.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------------------------------------------
# Alpha network (§4)


def alpha_levels(size):
  """(n, min_res): n = min(6, log2(size) - 2) levels starting at min_res = size // 2**(n-1)."""
  n = min(6, int(math.log2(size)) - 2)
  if n < 2:
    raise ValueError(f"size {size} too small for the alpha network (needs >= 16)")
  return n, size // 2 ** (n - 1)


def select_features(all_features, size):
  """Picks the 2n alpha-net inputs from the Generator feature list [conv1, convs.0, convs.1, ...].

  f_j = convs[2*b0 + j] = all_features[1 + 2*b0 + j], b0 = log2(min_res) - 3.
  """
  n, min_res = alpha_levels(size)
  b0 = int(math.log2(min_res)) - 3
  start = 1 + 2 * b0
  feats = list(all_features[start:start + 2 * n])
  assert len(feats) == 2 * n, (len(all_features), size)
  return feats


class _AlphaBase(nn.Module):
  """Shared forward; subclasses define the module names (the function is identical)."""

  def __init__(self, size, channels):
    super().__init__()
    self.size = size
    self.n, self.min_res = alpha_levels(size)
    self.res = [self.min_res * 2 ** k for k in range(self.n)]
    self.level_channels = [channels[r] for r in self.res]
    # Up_k resizes level k to 2 * r_k (torch bicubic, A = -0.75, align_corners=True); Up_{n-1} unused.
    self.upsample_fns = nn.ModuleList(
        [nn.Upsample(size=(2 * r, 2 * r), mode="bicubic", align_corners=True) for r in self.res])

  def _first(self, k):  # conv applied to f_{2k}
    raise NotImplementedError

  def _second(self, k):  # conv applied to f_{2k+1}
    raise NotImplementedError

  def _merge(self, k):  # M_k, k = 1..n-2
    raise NotImplementedError

  def forward(self, features):
    """features: the 2n tensors f_0..f_{2n-1} (NCHW). Returns alpha [B, 1, size, size]."""
    assert len(features) == 2 * self.n, len(features)
    n = self.n
    p = [torch.cat([self._first(k)(features[2 * k]), self._second(k)(features[2 * k + 1])], 1)
         for k in range(n)]
    x = self.upsample_fns[0](p[0])
    for k in range(1, n - 1):
      x = self.upsample_fns[k](F.leaky_relu(self._merge(k)(torch.cat([p[k], x], 1)), 0.2))
    return torch.sigmoid(self.conv_n(p[n - 1] + x))


def _conv1x1(cin, cout):
  return nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0, bias=True)


def _merge_name(k):
  """M_1.. names of bg_extractor_repro: conv_next, conv_next2, conv_next3, ..."""
  return "conv_next" if k == 1 else f"conv_next{k}"


class BgExtractorRepro(_AlphaBase):
  """Official ``bg_extractor_repro`` names: conv1..conv{2n}, conv_next, conv_next2.., conv_n."""

  def __init__(self, size, channels):
    super().__init__(size, channels)
    for k, c in enumerate(self.level_channels):
      setattr(self, f"conv{2 * k + 1}", _conv1x1(c, 3))
      setattr(self, f"conv{2 * k + 2}", _conv1x1(c, 3))
    for k in range(1, self.n - 1):
      setattr(self, _merge_name(k), _conv1x1(12, 6))
    self.conv_n = _conv1x1(6, 1)

  def _first(self, k):
    return getattr(self, f"conv{2 * k + 1}")

  def _second(self, k):
    return getattr(self, f"conv{2 * k + 2}")

  def _merge(self, k):
    return getattr(self, _merge_name(k))


class BgExtractor(_AlphaBase):
  """Official non-repro ``bg_extractor`` names: conv_fns0.k, conv_fns1.k, conv_merge_fns.j, conv_n."""

  def __init__(self, size, channels):
    super().__init__(size, channels)
    self.conv_fns0 = nn.ModuleList([_conv1x1(c, 3) for c in self.level_channels])
    self.conv_fns1 = nn.ModuleList([_conv1x1(c, 3) for c in self.level_channels])
    self.conv_merge_fns = nn.ModuleList([_conv1x1(12, 6) for _ in range(self.n - 2)])
    self.conv_n = _conv1x1(6, 1)

  def _first(self, k):
    return self.conv_fns0[k]

  def _second(self, k):
    return self.conv_fns1[k]

  def _merge(self, k):
    return self.conv_merge_fns[k - 1]


def repro_to_nonrepro_key(key):
  """Maps a bg_extractor_repro state-dict key to the bg_extractor one (§4.1)."""
  name, rest = key.split(".", 1)
  if name == "conv_n":
    return key
  if name.startswith("conv_next"):
    j = 0 if name == "conv_next" else int(name[len("conv_next"):]) - 1
    return f"conv_merge_fns.{j}.{rest}"
  idx = int(name[len("conv"):]) - 1  # conv{2k+1} -> fns0.k, conv{2k+2} -> fns1.k
  return f"conv_fns{idx % 2}.{idx // 2}.{rest}"


# ---------------------------------------------------------------------------------------------------
# Losses (§7)


def d_logistic_loss(real_pred, fake_pred):
  """E[softplus(-D(real))] + E[softplus(D(fake))]."""
  return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred, real_img):
  """E_b[sum_{c,h,w} (d sum_b D(real) / d real)^2] (graph kept for the backward)."""
  (grad,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
  return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def alpha_loss(fake_pred, alpha, sat_weight=1.0, loss_multiplier=1.2, fg_coverage_value=0.25,
               bg_coverage_wt=0.0, bg_coverage_value=0.75):
  """L_A = w_sat*sat + lambda*(binarization + fg_coverage) + w_bg*bg_coverage.

  Returns (total, {'sat', 'binarization', 'fg_coverage', 'bg_coverage'}) with unweighted terms.
  """
  sat = F.softplus(-fake_pred).mean()
  binar = torch.minimum(alpha, 1 - alpha).mean()
  area = alpha.mean(dim=(1, 2, 3))  # mean_hw alpha_b (single channel)
  fg_cov = F.relu(fg_coverage_value - area).mean()
  bg_cov = F.relu(bg_coverage_value - (1 - area)).mean()
  total = sat_weight * sat + loss_multiplier * (binar + fg_cov) + bg_coverage_wt * bg_cov
  return total, {"sat": sat, "binarization": binar, "fg_coverage": fg_cov, "bg_coverage": bg_cov}


# ---------------------------------------------------------------------------------------------------
# Optimisers and one iteration (§8)


def make_optimizers(A, D, lr, g_reg_every=4, d_reg_every=16):
  """Adam with rosinality's lazy-regularisation scaling c = k/(k+1): (opt_A, opt_D)."""
  ca = g_reg_every / (g_reg_every + 1)
  cd = d_reg_every / (d_reg_every + 1)
  opt_a = torch.optim.Adam(A.parameters(), lr=lr * ca, betas=(0.0, 0.99 ** ca), eps=1e-8)
  opt_d = torch.optim.Adam(D.parameters(), lr=lr * cd, betas=(0.0, 0.99 ** cd), eps=1e-8)
  return opt_a, opt_d


_CFG_DEFAULTS = dict(truncation=1.0, mean_latent=None, r1=10.0, d_reg_every=16, r1_quirk_weight=1.0,
                     sat_weight=1.0, loss_multiplier=1.2, fg_coverage_value=0.25,
                     bg_coverage_wt=0.0, bg_coverage_value=0.75, n_devices=1,
                     background_mode="auto", return_grads=False)


def _get_cfg(cfg):
  out = dict(_CFG_DEFAULTS)
  src = cfg if isinstance(cfg, dict) else vars(cfg)
  unknown = set(src) - set(out)
  if unknown:
    raise KeyError(f"unknown cfg keys {sorted(unknown)}")
  out.update(src)
  return out


def d_per_device(D, x, n_devices):
  """D on each contiguous chunk of B/n_devices rows (per-device minibatch stddev), concatenated."""
  if n_devices == 1:
    return D(x)
  assert x.shape[0] % n_devices == 0, (x.shape[0], n_devices)
  return torch.cat([D(c) for c in x.chunk(n_devices, 0)], 0)


def _requires_grad(module, flag):
  for p in module.parameters():
    p.requires_grad_(flag)


def _grads(module):
  return {k: (None if p.grad is None else p.grad.detach().clone())
          for k, p in module.named_parameters()}


def _composite(G, A, z, noise_fg, noise_bg, c, with_grad):
  """fg (truncated, features) and bg (back=True, no truncation) under no_grad; alpha; composite."""
  with torch.no_grad():
    fg, feats = G([z], noise=noise_fg, truncation=c["truncation"], truncation_latent=c["mean_latent"])
    bg, _ = G([z], noise=noise_bg, back=True, background_mode=c["background_mode"])
  feats = select_features(feats, G.size)
  if with_grad:
    alpha = A(feats)
  else:
    with torch.no_grad():
      alpha = A(feats)
  return alpha * fg + (1 - alpha) * bg, alpha, fg, bg


def official_iteration(i, G, A, D, opt_A, opt_D, real, inputs, cfg):
  """One iteration of the official train.py loop with explicit latents and noise.

  inputs: z_d, noise_fg_d, noise_bg_d, z_a, noise_fg_a, noise_bg_a (noise: lists in rosinality order).
  cfg: dict (or namespace) with keys of _CFG_DEFAULTS. Returns a dict of losses, terms and alphas
  (and gradient copies when cfg['return_grads']).
  """
  c = _get_cfg(cfg)
  nd = c["n_devices"]
  out = {}

  # D step: A and G frozen, composite from the current A.
  _requires_grad(A, False)
  _requires_grad(D, True)
  x_c, alpha_d, _, _ = _composite(G, A, inputs["z_d"], inputs["noise_fg_d"], inputs["noise_bg_d"], c,
                                  with_grad=False)
  fake_pred = d_per_device(D, x_c, nd)
  real_pred = d_per_device(D, real, nd)
  d_loss = d_logistic_loss(real_pred, fake_pred)
  D.zero_grad(set_to_none=True)
  d_loss.backward()
  if c["return_grads"]:
    out["grads_d"] = _grads(D)
  opt_D.step()
  out.update(d_loss=d_loss.detach(), real_score=real_pred.detach().mean(),
             fake_score=fake_pred.detach().mean(), alpha_d=alpha_d.detach())

  # Lazy R1 with the official quirk term q * D(real)[0] (mean over devices' first samples).
  if i % c["d_reg_every"] == 0:
    real_r = real.detach().clone().requires_grad_(True)
    real_pred = d_per_device(D, real_r, nd)
    r1 = d_r1_loss(real_pred, real_r)
    firsts = real_pred.view(nd, -1, real_pred.shape[-1])[:, 0]  # [n_devices, 1]
    quirk = firsts.mean()
    r1_total = c["r1"] / 2 * r1 * c["d_reg_every"] + c["r1_quirk_weight"] * quirk
    D.zero_grad(set_to_none=True)
    r1_total.backward()
    if c["return_grads"]:
      out["grads_r1"] = _grads(D)
    opt_D.step()
    out.update(r1=r1.detach(), r1_loss=r1_total.detach(), r1_quirk=quirk.detach())
  else:
    out.update(r1=None, r1_loss=None, r1_quirk=None)

  # A step: D frozen (no D grads), G constant, gradient into A through D.
  _requires_grad(A, True)
  _requires_grad(D, False)
  D.zero_grad(set_to_none=True)
  x_c, alpha_a, _, _ = _composite(G, A, inputs["z_a"], inputs["noise_fg_a"], inputs["noise_bg_a"], c,
                                  with_grad=True)
  fake_pred = d_per_device(D, x_c, nd)
  a_loss, terms = alpha_loss(fake_pred, alpha_a, c["sat_weight"], c["loss_multiplier"],
                             c["fg_coverage_value"], c["bg_coverage_wt"], c["bg_coverage_value"])
  A.zero_grad(set_to_none=True)
  a_loss.backward()
  if c["return_grads"]:
    out["grads_a"] = _grads(A)
  opt_A.step()
  _requires_grad(D, True)
  out.update(a_loss=a_loss.detach(), alpha_a=alpha_a.detach(),
             a_fake_score=fake_pred.detach().mean(),
             **{f"a_{k}": v.detach() for k, v in terms.items()})
  return out


# ---------------------------------------------------------------------------------------------------
# Inference (§12, official test_sample.py)


@torch.no_grad()
def official_test_sample(G, A, z, z_bg, noise_fg, noise_bg, mean_latent, truncation=0.5,
                         threshold=0.9, background_mode="auto"):
  """One batch of the official test_sample.py with explicit latents and noise.

  fg, features = G(z; psi, w_avg); bg = G_bg(z'; psi, w_avg) with an independent z' (truncated as
  well); alpha = A(features); hard mask = alpha > threshold (strict); composite = fg alpha +
  (1 - alpha) bg. Returns NCHW tensors: image, background, alpha, hard_mask (bool), composite.
  """
  fg, feats = G([z], noise=noise_fg, truncation=truncation, truncation_latent=mean_latent)
  bg, _ = G([z_bg], noise=noise_bg, truncation=truncation, truncation_latent=mean_latent, back=True,
            background_mode=background_mode)
  alpha = A(select_features(feats, G.size))
  return {"image": fg, "background": bg, "alpha": alpha, "hard_mask": alpha > threshold,
          "composite": fg * alpha + (1 - alpha) * bg}
