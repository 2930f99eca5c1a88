"""The sharded training step: 4 devices equal 1 device emulating 4 (stddev_chunks), and D's
minibatch stddev really groups per device (as the official per-GPU DDP runs did).

The training comparison runs in float64 (jax.enable_x64 inside the test only): Adam with beta1 = 0
turns float32 reduction-order rounding into parameter differences of up to a few % of lr within
a few steps (README, parity notes; measured here: D params 9e-5 apart at lr 2e-3 after 3 float32
iterations, A params < 1e-5), which would hide a real discrepancy at the 1e-5 level.
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from l4f_jax.method import step as step_lib
from l4f_jax.system import training
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.models.stylegan2 import mean_latent
from l4f_jax.system import sharding
from l4f_jax.system.weights import discriminator_from_config, generator_from_config
from tests.tiny_world import tiny_config

DEVICES, PER_DEVICE, ITERS, SEED = 4, 2, 3, 7


@pytest.fixture(scope="module")
def world():
  assert len(jax.devices()) >= DEVICES, "tests/conftest.py provides 4 fake CPU devices"
  config = tiny_config(16)
  g, d = generator_from_config(config), discriminator_from_config(config)
  models = step_lib.Models(generator=g, alpha=AlphaNetwork(16), discriminator=d)
  g_params = g.init(jax.random.key(1), jnp.zeros((1, g.style_dim)),
                    noise_key=jax.random.key(1))["params"]
  w_avg = mean_latent(g, g_params, jax.random.key(2), 256)
  cfg = step_lib.L4FConfig(lr=2e-3, truncation=0.7, bg_coverage_wt=1.0)  # R1 at i = 0 only
  alpha = training.init_alpha(models.alpha, g, jax.random.key(3))
  d_params = training.init_discriminator(d, jax.random.key(4))
  batch = DEVICES * PER_DEVICE
  reals = np.random.default_rng(0).uniform(-1, 1, (ITERS, batch, 16, 16, 3)).astype(np.float32)
  host = jax.device_get  # host copies: a run's donated state must not alias them
  return dict(models=models, cfg=cfg, g=host(g_params), w=host(w_avg), alpha=host(alpha),
              d=host(d_params), reals=reals)


def _f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _train(world, n_devices, chunks):
  """ITERS float64 iterations of the jitted, sharded step on `n_devices` devices (call under
  jax.enable_x64); returns host state + metrics."""
  mesh = sharding.make_mesh(n_devices)
  cfg = dataclasses.replace(world["cfg"], stddev_chunks=chunks)
  state = sharding.replicate(step_lib.init_state(cfg, world["models"], _f64(world["alpha"]),
                                                 _f64(world["d"])), mesh)
  g, w = sharding.replicate(_f64(world["g"]), mesh), sharding.replicate(_f64(world["w"]), mesh)
  fns, metrics = {}, []
  for i in range(ITERS):
    do_r1 = i % cfg.d_reg_every == 0
    real = jax.device_put(_f64(world["reals"][i]), NamedSharding(mesh, sharding.SHARDED))
    if do_r1 not in fns:
      fn = training.make_train_step(world["models"], cfg, mesh, global_batch=len(real), seed=SEED,
                                    do_r1=do_r1)
      fns[do_r1] = fn.lower(state, g, w, real).compile()
    state, m = fns[do_r1](state, g, w, real)
    metrics.append(jax.device_get(m))
  return sharding.to_host(state), metrics


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_four_devices_equal_one_device_emulating_four(world):
  t0 = time.time()
  with jax.enable_x64(True):
    sharded, m_sharded = _train(world, DEVICES, chunks=1)
    emulated, m_emulated = _train(world, 1, chunks=DEVICES)
  assert np.asarray(jax.tree.leaves(sharded.d_params)[0]).dtype == np.float64
  print(f"3 iterations on 4 devices and on 1 emulating 4: {time.time() - t0:.1f} s")
  assert int(sharded.step) == int(emulated.step) == ITERS
  assert "r1" in m_sharded[0] and "r1" not in m_sharded[1]
  for name in ("alpha_params", "d_params", "alpha_ema", "alpha_opt_state", "d_opt_state"):
    diff = _max_diff(getattr(sharded, name), getattr(emulated, name))
    print(f"{name}: max |4 devices - 1 emulating 4| = {diff:.2e}")
    assert diff <= 1e-5, (name, diff)
  moved = _max_diff(sharded.d_params, world["d"])
  assert moved > 1e-3, moved  # the comparison is not vacuous: D did train
  for a, b in zip(m_sharded, m_emulated):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_minibatch_stddev_groups_per_device(world):
  """D logits under shard_map equal the emulated per-device groups and differ from one global
  grouping; the test batch makes device 0's two rows identical (zero stddev) so the grouping
  shows clearly."""
  models, d_params = world["models"], world["d"]
  x = world["reals"][0].copy()
  x[1] = x[0]  # device 0's rows: stddev 0 within the device, not across devices
  mesh = sharding.make_mesh(DEVICES)

  def disc(chunks):
    cfg = dataclasses.replace(world["cfg"], stddev_chunks=chunks)
    return lambda p, v: step_lib.discriminate(p, v, models=models, cfg=cfg)

  per_device = jax.jit(sharding.data_parallel(
      disc(1), mesh, in_specs=(sharding.REPLICATED, sharding.SHARDED),
      out_specs=sharding.SHARDED))
  sharded = np.asarray(per_device(sharding.replicate(d_params, mesh),
                                  jax.device_put(x, NamedSharding(mesh, sharding.SHARDED))))
  emulated = np.asarray(jax.jit(disc(DEVICES))(d_params, x))
  global_groups = np.asarray(jax.jit(disc(1))(d_params, x))
  same, grouping = np.max(np.abs(sharded - emulated)), np.max(np.abs(sharded - global_groups))
  print(f"D logits: |sharded - emulated| = {same:.2e}, |sharded - global groups| = {grouping:.2e}")
  assert same <= 1e-6
  assert grouping > 1e-3
  # Swapping rows inside a device leaves its logits alone; swapping across devices does not.
  inside, across = x.copy(), x.copy()
  inside[[2, 3]] = x[[3, 2]]
  across[[1, 2]] = x[[2, 1]]
  out_inside = np.asarray(jax.jit(disc(DEVICES))(d_params, inside))
  out_across = np.asarray(jax.jit(disc(DEVICES))(d_params, across))
  np.testing.assert_allclose(out_inside[[3, 2]], emulated[[2, 3]], atol=1e-6)
  np.testing.assert_allclose(out_inside[[0, 1, 4, 5, 6, 7]], emulated[[0, 1, 4, 5, 6, 7]],
                             atol=1e-6)
  assert np.max(np.abs(out_across[[0, 3]] - emulated[[0, 3]])) > 1e-3
