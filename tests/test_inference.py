"""inference.sample_masks: official test_sample.py outputs, independent of the batch size."""
import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.method import inference
from l4f_jax.system import training
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.models.stylegan2 import mean_latent
from l4f_jax.system.weights import generator_from_config
from tests.tiny_world import tiny_config


# The same samples computed by two different programs (another batch size, or another background
# pass beside them) may differ in the last bits: XLA:CPU picks its kernels' blocking, and with it
# the summation order, from the shapes, the compiled program and the CPU. Measured: 1.7e-6 at
# |x| = 3.2 (4.4 float32 ulps) on AMD Zen 4 with the tests' compile flags; bit-identical on Intel
# Sapphire Rapids. A few ulps of the largest value; a wrong key or pairing moves values by ~1.
ROUNDING = 16 * np.finfo(np.float32).eps


def _equal_up_to_rounding(got, want, name):
  np.testing.assert_allclose(got, want, rtol=0, atol=ROUNDING * np.abs(want).max(), err_msg=name)


def test_sample_masks():
  g = generator_from_config(tiny_config(16))
  a = AlphaNetwork(16)
  g_params = g.init(jax.random.key(0), jnp.zeros((1, g.style_dim)),
                    noise_key=jax.random.key(0))["params"]
  # Random init has zero noise weights and biases, which makes G_bg constant: perturb every leaf.
  leaves, tree = jax.tree.flatten(g_params)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  g_params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
  a_params = training.init_alpha(a, g, jax.random.key(1))
  w_avg = mean_latent(g, g_params, jax.random.key(2), 64)
  kw = dict(generator=g, alpha_net=a, truncation=0.5, threshold=0.5)
  key = jax.random.key(3)
  out = inference.sample_masks(g_params, a_params, w_avg, key, 3, 2, **kw)
  assert out["image"].shape == out["background"].shape == out["composite"].shape == (3, 16, 16, 3)
  assert out["alpha"].shape == (3, 16, 16, 1) and out["hard_mask"].dtype == np.bool_
  np.testing.assert_array_equal(out["hard_mask"], out["alpha"][..., 0] > 0.5)  # strict
  a_ = out["alpha"]
  np.testing.assert_allclose(out["composite"], a_ * out["image"] + (1 - a_) * out["background"],
                             atol=1e-6)
  again = inference.sample_masks(g_params, a_params, w_avg, key, 3, 3, **kw)
  for k in ("image", "background", "composite", "alpha"):  # sample i depends on (key, i) only
    _equal_up_to_rounding(again[k], out[k], k)
  decided = np.abs(out["alpha"][..., 0] - 0.5) > ROUNDING * np.abs(out["alpha"]).max()
  np.testing.assert_array_equal(again["hard_mask"][decided], out["hard_mask"][decided])
  paired = inference.sample_masks(g_params, a_params, w_avg, key, 3, 3, independent_bg=False,
                                  **kw)
  _equal_up_to_rounding(paired["image"], out["image"], "image")
  assert np.max(np.abs(paired["background"] - out["background"])) > 1e-3


def test_sample_masks_match_official_test_sample():
  """sample_masks = the official test_sample.py (torch reference, RameenAbdal/Labels4Free test_sample.py) on the same
  weights, z, z', noise maps and w_avg: independent background latents, psi = 0.5 on fg and bg,
  hard mask alpha > 0.9 (strict). float32."""
  import torch
  from l4f_jax.models.stylegan2 import Generator
  from l4f_jax.reference import torch_labels4free as tl
  from l4f_jax.reference import torch_stylegan2 as ts
  from l4f_jax.system import convert

  size, n, batch = 32, 5, 2  # 3 batches, the last one padded
  arch = dict(channel_multiplier=2, channel_base=512, channel_max=32)
  torch.manual_seed(0)
  tg = ts.perturb_(ts.Generator(size, 32, 2, **arch), 0)
  ta = tl.BgExtractorRepro(size, tg.channels)
  with torch.no_grad():  # spread alpha over (0, 1) so that the hard mask has both values
    ta.conv_n.weight.mul_(30.0)
    ta.conv_n.bias.fill_(-3.0)
    w_avg = tg.mean_latent(4096)
  sd = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
  g = Generator(size, style_dim=32, n_mlp=2, **arch)
  a = AlphaNetwork(size)
  g_params = convert.convert_generator(sd(tg))[1]
  a_params = convert.convert_alpha(sd(ta), dict(arch, size=size))[1]
  key = jax.random.key(7)
  out = inference.sample_masks(g_params, a_params, jnp.asarray(w_avg.numpy()), key, n, batch,
                               generator=g, alpha_net=a)  # official defaults: psi 0.5, th 0.9

  # sample_masks' draws: sample i uses fold_in(key, i); streams _FG (z, noise) and _BG (z', noise)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
  draw = lambda stream: jax.vmap(lambda k: inference._draw(k, stream, g))(keys)
  (z, noise), (z_bg, noise_bg) = draw(inference._FG), draw(inference._BG)
  nchw = lambda x: torch.from_numpy(np.array(x).transpose(0, 3, 1, 2))
  want = tl.official_test_sample(tg, ta, torch.from_numpy(np.array(z)),
                                 torch.from_numpy(np.array(z_bg)), [nchw(x) for x in noise],
                                 [nchw(x) for x in noise_bg], w_avg)
  want = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in want.items()}
  errs = {k: float(np.abs(out[k] - want[k]).max()) for k in ("image", "background", "alpha",
                                                              "composite")}
  print("max abs errors", errs)
  for k, tol in (("image", 1e-4), ("background", 1e-4), ("alpha", 1e-5), ("composite", 1e-5)):
    assert errs[k] <= tol, (k, errs[k])
  # the hard mask agrees wherever alpha is not within float32 noise of the threshold
  alpha = want["alpha"][..., 0]
  decided = np.abs(alpha - 0.9) > 1e-5
  np.testing.assert_array_equal(out["hard_mask"][decided], want["hard_mask"][..., 0][decided])
  frac = want["hard_mask"].mean()
  print(f"hard mask fraction {frac:.3f}, alpha in [{alpha.min():.3f}, {alpha.max():.3f}]")
  assert 0.05 < frac < 0.95 and decided.mean() > 0.99  # both values occur: the check has teeth
  # the background really is G_bg of an independent z' (it differs from G_bg(z) of the same noise)
  with torch.no_grad():
    same_z, _ = tg([torch.from_numpy(np.array(z))], noise=[nchw(x) for x in noise_bg],
                   truncation=0.5, truncation_latent=w_avg, back=True)
  assert np.abs(same_z.numpy().transpose(0, 2, 3, 1) - out["background"]).max() > 1e-2
