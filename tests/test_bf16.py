"""bf16 compute (L4FConfig.compute_dtype="bfloat16", train.py --dtype=bfloat16) against float32.

The same state and inputs go through one R1 iteration in float32 and with G and D in bfloat16.
Bounds come from bf16's unit roundoff u = 2^-8 (8 significand bits): G's images, a handful of
convolutions deep, stay within 16u = 0.0625 of float32 on the [-1, 1] range; alpha, a sigmoid of
A (which itself stays float32) reading bf16 features, within 4u; loss values within 4u relative.
A lower bound shows the bf16 path is really taken (float32 reruns agree to ~1e-7).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l4f_jax.method import step as step_lib
from l4f_jax.system import training
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.models.stylegan2 import mean_latent
from l4f_jax.system.weights import discriminator_from_config, generator_from_config
from tests.tiny_world import random_generator_params, tiny_config

U = 2.0 ** -8
SIZE, BATCH = 16, 4


@pytest.fixture(scope="module")
def runs():
  config = tiny_config(SIZE)
  g, d = generator_from_config(config), discriminator_from_config(config)
  models = step_lib.Models(generator=g, alpha=AlphaNetwork(SIZE), discriminator=d)
  g_params = random_generator_params(g, jax.random.key(1))
  w_avg = mean_latent(g, g_params, jax.random.key(2), 256)
  alpha = training.init_alpha(models.alpha, g, jax.random.key(3))
  d_params = training.init_discriminator(d, jax.random.key(4))
  real = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, SIZE, SIZE, 3)), jnp.float32)
  inputs = step_lib.sample_inputs(jax.random.key(5), BATCH, g)
  base = step_lib.L4FConfig(lr=2e-3, truncation=0.7, stddev_chunks=2)
  out = {}
  for name, dtype in (("f32", None), ("bf16", "bfloat16")):
    cfg = dataclasses.replace(base, compute_dtype=dtype)
    state = step_lib.init_state(cfg, models, alpha, d_params)
    step = jax.jit(step_lib.train_step, static_argnames=("models", "cfg", "do_r1", "axis_name"))
    new_state, metrics = step.lower(state, g_params, w_avg, real, inputs, models=models, cfg=cfg,
                                    do_r1=True).compile()(state, g_params, w_avg, real, inputs)
    comp = jax.jit(step_lib.composite, static_argnames=("models", "cfg")).lower(
        g_params, alpha, w_avg, inputs.z_a, inputs.noise_fg_a, inputs.noise_bg_a, models=models,
        cfg=cfg).compile()
    x_c, a, fg, bg = comp(g_params, alpha, w_avg, inputs.z_a, inputs.noise_fg_a, inputs.noise_bg_a)
    out[name] = dict(state=jax.device_get(new_state), metrics=jax.device_get(metrics),
                     alpha=np.asarray(a), fg=np.asarray(fg), bg=np.asarray(bg))
  return out


def _max(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_bf16_images_and_alpha_near_float32(runs):
  f32, bf16 = runs["f32"], runs["bf16"]
  for k in ("fg", "bg", "alpha"):
    assert bf16[k].dtype == np.float32, k  # cast back to the inputs' dtype
  d_fg, d_bg, d_alpha = (_max(bf16[k], f32[k]) for k in ("fg", "bg", "alpha"))
  print(f"bf16 vs float32: fg {d_fg:.2e}, bg {d_bg:.2e}, alpha {d_alpha:.2e}")
  assert 1e-5 < d_fg <= 16 * U and 1e-5 < d_bg <= 16 * U
  assert 1e-6 < d_alpha <= 4 * U


def test_bf16_losses_near_float32_and_state_stays_float32(runs):
  f32, bf16 = runs["f32"], runs["bf16"]
  assert set(f32["metrics"]) == set(bf16["metrics"]) and "r1" in f32["metrics"]
  for k in ("d_loss", "r1", "a_loss", "real_score", "fake_score", "a_fake_score"):
    a, b = float(f32["metrics"][k]), float(bf16["metrics"][k])
    assert abs(a - b) <= 4 * U * max(abs(a), 1.0), (k, a, b)
  for name in ("alpha_params", "d_params", "alpha_ema", "alpha_opt_state", "d_opt_state"):
    for leaf in jax.tree.leaves(getattr(bf16["state"], name)):
      if np.issubdtype(np.asarray(leaf).dtype, np.floating):
        assert np.asarray(leaf).dtype == np.float32, name
