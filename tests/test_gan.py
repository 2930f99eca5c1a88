"""The StyleGAN2 pretraining step (method/gan.py): sharded execution, EMA, regularisers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.method import gan
from l4f_jax.models.stylegan2 import Discriminator, Generator
from l4f_jax.system import sharding


def _setup(cfg):
  G = Generator(16, style_dim=16, n_mlp=1, channel_max=8)
  D = Discriminator(16, channel_max=8)
  k = jax.random.key(0)
  gp = G.init(k, jnp.zeros((1, 16)), noise_key=k)["params"]
  dp = D.init(k, jnp.zeros((4, 16, 16, 3)))["params"]
  return G, D, gan.init_gan_state(cfg, gp, dp)


def test_sharded_step_ema_and_regularisers():
  cfg = gan.GANConfig(lr=0.01, r1=1.0, pl_weight=2.0, ema_kimg=0.01)
  G, D, state = _setup(cfg)
  mesh = sharding.make_mesh(4)
  step = sharding.data_parallel(
      functools.partial(gan.gan_train_step, G=G, D=D, cfg=cfg, do_r1=True, do_pl=True,
                        axis_name=sharding.AXIS),
      mesh, in_specs=(sharding.REPLICATED, sharding.SHARDED, sharding.REPLICATED),
      out_specs=(sharding.REPLICATED, sharding.REPLICATED))
  old = jax.device_get(state)
  real = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3), minval=-1, maxval=1)
  new, metrics = jax.jit(step)(sharding.replicate(state, mesh), real, jax.random.key(2))
  new, metrics = jax.device_get((new, metrics))
  assert int(new.step) == 1
  for k in ("d_loss", "g_loss", "r1", "path_penalty"):
    assert np.isfinite(metrics[k]), k
  assert metrics["r1"] > 0 and metrics["path_penalty"] > 0
  assert float(new.mean_path_length) > 0
  # EMA over the global batch (8 images): g_ema' = g' + accum (g_ema - g').
  accum = 0.5 ** (8 / (cfg.ema_kimg * 1000))
  moved = 0.0
  for e_new, g_new, e_old in zip(jax.tree.leaves(new.g_ema), jax.tree.leaves(new.g_params),
                                 jax.tree.leaves(old.g_ema)):
    np.testing.assert_allclose(e_new, g_new + accum * (e_old - g_new), rtol=1e-5, atol=1e-6)
    moved = max(moved, float(np.abs(g_new - e_old).max()))
  assert moved > 1e-4  # G really moved, so the EMA check is not trivial

