"""StyleGAN2 G and D parity with the PyTorch reference, through the converter.

Every model here goes rosinality checkpoint (make_rosinality_checkpoint) -> experiments.convert ->
load_weights -> jitted Flax forward, and is compared with the reference module in float32 at the
highest matmul precision (conftest). Bound: max abs error <= 1e-4. Each test prints its errors.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l4f_jax.system.convert import convert_file
from l4f_jax.models.stylegan2 import make_noise, noise_shapes, num_latents, num_layers
from l4f_jax.system.weights import (discriminator_from_config, generator_from_config,
                                    generator_params, load_weights)
from l4f_jax.reference import torch_stylegan2 as ref

TOL = 1e-4


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _converted(tmp_root, name, size, **kw):
  """(torch modules, config, trees) for a random-weight rosinality checkpoint, converted once."""
  src = f"{tmp_root}/{name}.pt"
  mods = ref.make_rosinality_checkpoint(src, size, **kw)
  convert_file(src, f"{tmp_root}/{name}", log=lambda s: None)
  config, trees = load_weights(f"{tmp_root}/{name}")
  return mods, config, trees


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("parity"))


SMALL = dict(channel_base=2048, channel_max=64, style_dim=64, n_mlp=3, seed=1)


@pytest.fixture(scope="module")
def small(tmp_root):
  return _converted(tmp_root, "small32", 32, **SMALL)


def _g_runner(config):
  gen = generator_from_config(config)

  @functools.partial(jax.jit, static_argnames=("input_is_latent", "truncation", "background",
                                               "background_mode"))
  def run(params, styles, noise, w_avg=None, input_is_latent=False, truncation=1.0,
          background=False, background_mode="auto"):
    return gen.apply({"params": params}, styles, noise=noise, input_is_latent=input_is_latent,
                     truncation=truncation, truncation_latent=w_avg, background=background,
                     background_mode=background_mode)
  return gen, run


def _torch_g(module, styles, noise=None, **kw):
  with torch.no_grad():
    img, feats = module([torch.from_numpy(np.asarray(styles))], noise=noise,
                        randomize_noise=False, **kw)
  return _nhwc(img), [_nhwc(f) for f in feats]


def _compare_g(label, got, want):
  """Image and every feature map; returns (image error, worst feature error)."""
  (img, feats), (t_img, t_feats) = got, want
  assert len(feats) == len(t_feats)
  e_img = _err(img, t_img)
  e_feat = max(_err(f, t) for f, t in zip(feats, t_feats))
  for f, t in zip(feats, t_feats):
    assert f.shape == t.shape
  print(f"[parity] {label}: image {e_img:.2e}, features ({len(feats)}) {e_feat:.2e}")
  assert e_img <= TOL and e_feat <= TOL, (e_img, e_feat)
  return e_img, e_feat


def _z(n, dim, seed):
  return np.random.RandomState(seed).randn(n, dim).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Small generator (32 px, 64 channels): every forward option


def test_converted_config_and_noise_buffers(small):
  mods, config, trees = small
  assert (config["size"], config["style_dim"], config["n_mlp"]) == (32, 64, 3)
  assert config["channel_base"] == 2048 and config["channel_max"] == 64
  assert sorted(trees) == ["d", "g", "g_ema", "latent_avg", "noises"]
  assert trees["latent_avg"].shape == (1, 64)
  stored = [getattr(mods["g_ema"].noises, f"noise_{j}").numpy() for j in range(num_layers(32))]
  assert [n.shape for n in trees["noises"]] == noise_shapes(32, 1)
  for got, want in zip(trees["noises"], stored):
    np.testing.assert_array_equal(np.asarray(got), want.transpose(0, 2, 3, 1))


def test_generator_image_and_features(small):
  mods, config, trees = small
  _, run = _g_runner(config)
  z = _z(2, 64, 0)
  _compare_g("32px z->image", run(trees["g_ema"], z, trees["noises"]),
             _torch_g(mods["g_ema"], z))
  # 'noises' holds g_ema's buffers; g has its own, so pass those explicitly to both.
  g_noise = [getattr(mods["g"].noises, f"noise_{j}") for j in range(num_layers(32))]
  _compare_g("32px g (not g_ema)", run(trees["g"], z, [_nhwc(n) for n in g_noise]),
             _torch_g(mods["g"], z, noise=g_noise))


@pytest.mark.parametrize("mode", ["conv1", "input", "auto"])
def test_generator_background(small, mode):
  mods, config, trees = small
  _, run = _g_runner(config)
  z = _z(2, 64, 1)
  got = run(trees["g_ema"], z, trees["noises"], background=True, background_mode=mode)
  _compare_g(f"32px background {mode}", got,
             _torch_g(mods["g_ema"], z, back=True, background_mode=mode))
  fg = run(trees["g_ema"], z, trees["noises"])[0]
  assert _err(got[0], fg) > 1e-2  # the background pass really differs from the foreground
  if mode in ("conv1", "auto"):
    assert float(jnp.max(jnp.abs(got[1][0]))) == 0.0  # conv1 output zeroed


def test_generator_truncation_with_given_w_avg(small):
  mods, config, trees = small
  _, run = _g_runner(config)
  z = _z(2, 64, 2)
  w_avg = trees["latent_avg"]
  got = run(trees["g_ema"], z, trees["noises"], w_avg, truncation=0.5)
  want = _torch_g(mods["g_ema"], z, truncation=0.5,
                  truncation_latent=torch.from_numpy(np.array(w_avg)))
  _compare_g("32px truncation 0.5 (latent_avg)", got, want)
  untrunc = run(trees["g_ema"], z, trees["noises"])[0]
  assert _err(got[0], untrunc) > 1e-2


def test_generator_w_plus_input(small):
  mods, config, trees = small
  _, run = _g_runner(config)
  w_plus = _z(2 * num_latents(32), 64, 3).reshape(2, num_latents(32), 64)
  got = run(trees["g_ema"], w_plus, trees["noises"], input_is_latent=True)
  _compare_g("32px w+ input", got, _torch_g(mods["g_ema"], w_plus, input_is_latent=True))


def test_explicit_noise_order_shapes_and_keys(small):
  mods, config, trees = small
  _, run = _g_runner(config)
  noise = make_noise(jax.random.PRNGKey(7), 32, 2)
  assert [n.shape for n in noise] == noise_shapes(32, 2)
  assert [tuple(n.shape) for n in mods["g_ema"].make_noise(2)] == [
      (b, c, h, w) for b, h, w, c in noise_shapes(32, 2)]
  by_res = {}
  for j, n in enumerate(noise):
    by_res.setdefault(n.shape, []).append(j)
  for same in by_res.values():  # one key per layer: maps of equal resolution differ
    for a in same[1:]:
      assert _err(noise[same[0]], noise[a]) > 0.5
  assert _err(noise[0][0], noise[0][1]) > 0.5  # and samples differ
  t_noise = [torch.from_numpy(np.array(n).transpose(0, 3, 1, 2)) for n in noise]
  z = _z(2, 64, 4)
  _compare_g("32px explicit per-sample noise", run(trees["g_ema"], z, noise),
             _torch_g(mods["g_ema"], z, noise=t_noise))
  # The noise is used in order: swapping two equal-shaped maps changes the output.
  swapped = list(noise)
  swapped[1], swapped[2] = noise[2], noise[1]
  assert _err(run(trees["g_ema"], z, swapped)[0], run(trees["g_ema"], z, noise)[0]) > 1e-3


# ------------------------------------------------------------------------------------------------
# Discriminator


def _d_runner(config):
  disc = discriminator_from_config(config, stddev_group=4)
  return jax.jit(lambda p, x: disc.apply({"params": p}, x))


def _torch_d(module, x):
  with torch.no_grad():
    return module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_discriminator_logits(small, batch):
  mods, config, trees = small
  run = _d_runner(config)
  x = np.random.RandomState(batch).randn(batch, 32, 32, 3).astype(np.float32)
  got, want = np.asarray(run(trees["d"], x)), _torch_d(mods["d"], x)
  e = _err(got, want)
  print(f"[parity] 32px D batch {batch}: logits {e:.2e}")
  assert got.shape == (batch, 1) and e <= TOL


def test_discriminator_strided_stddev_groups(small):
  """Batch 8, groups of 4: sample b joins column b % 2, so 0<->2 swap only permutes logits."""
  mods, config, trees = small
  run = _d_runner(config)
  x = np.random.RandomState(11).randn(8, 32, 32, 3).astype(np.float32)
  base = np.asarray(run(trees["d"], x))
  same = x.copy()
  same[[0, 2]] = x[[2, 0]]
  np.testing.assert_allclose(np.asarray(run(trees["d"], same))[[2, 0]], base[[0, 2]], atol=1e-5)
  cross = x.copy()
  cross[[0, 1]] = x[[1, 0]]
  got = np.asarray(run(trees["d"], cross))
  assert _err(got[[1, 0]], base[[0, 1]]) > 1e-6  # different group statistics
  assert _err(got, _torch_d(mods["d"], cross)) <= TOL


# ------------------------------------------------------------------------------------------------
# Real configurations


def test_generator_512_background_auto(tmp_root):
  """At 512 px 'auto' zeroes the constant input (Labels4Free's Car variant); tiny widths."""
  mods, config, trees = _converted(tmp_root, "tiny512", 512, channel_base=1024, channel_max=16,
                                   style_dim=32, n_mlp=2, seed=5, with_d=False)
  _, run = _g_runner(config)
  z = _z(1, 32, 5)
  _compare_g("512px (tiny widths) foreground", run(trees["g_ema"], z, trees["noises"]),
             _torch_g(mods["g_ema"], z))
  got = run(trees["g_ema"], z, trees["noises"], background=True, background_mode="auto")
  _compare_g("512px background auto (= input)", got,
             _torch_g(mods["g_ema"], z, back=True, background_mode="auto"))
  assert float(jnp.max(jnp.abs(got[1][0]))) > 0  # conv1 output is not zeroed at 512


@pytest.fixture(scope="module")
def g256_cm2(tmp_root):
  return _converted(tmp_root, "g256_cm2", 256, channel_multiplier=2, seed=2)


@pytest.mark.parametrize("cm,batch", [(1, 2), (2, 1)])
def test_generator_256(tmp_root, g256_cm2, cm, batch):
  if cm == 2:
    mods, config, trees = g256_cm2
  else:
    mods, config, trees = _converted(tmp_root, "g256_cm1", 256, channel_multiplier=1, seed=1,
                                     with_d=False)
  assert (config["channel_multiplier"], config["style_dim"], config["n_mlp"]) == (cm, 512, 8)
  _, run = _g_runner(config)
  z = _z(batch, 512, cm)
  w_avg = trees["latent_avg"]
  got = run(generator_params(trees), z, trees["noises"], w_avg, truncation=0.7)
  want = _torch_g(mods["g_ema"], z, truncation=0.7,
                  truncation_latent=torch.from_numpy(np.array(w_avg)))
  _compare_g(f"256px cm={cm} batch {batch} psi 0.7", got, want)


def test_discriminator_256(g256_cm2):
  mods, config, trees = g256_cm2
  run = _d_runner(config)
  x = np.random.RandomState(3).randn(2, 256, 256, 3).astype(np.float32)
  e = _err(run(trees["d"], x), _torch_d(mods["d"], x))
  print(f"[parity] 256px cm=2 D batch 2: logits {e:.2e}")
  assert e <= TOL


@pytest.mark.slow
def test_generator_1024_config_f(tmp_root):
  mods, config, trees = _converted(tmp_root, "g1024", 1024, channel_multiplier=2, seed=3,
                                   with_d=False)
  assert config["channel_multiplier"] == 2 and config["size"] == 1024
  _, run = _g_runner(config)
  z = _z(1, 512, 9)
  w_avg = trees["latent_avg"]
  got = run(trees["g_ema"], z, trees["noises"], w_avg, truncation=0.5)
  want = _torch_g(mods["g_ema"], z, truncation=0.5,
                  truncation_latent=torch.from_numpy(np.array(w_avg)))
  _compare_g("1024px config-f psi 0.5", got, want)
