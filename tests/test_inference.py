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
  for k in out:  # sample i depends on (key, i) only
    np.testing.assert_allclose(out[k], again[k], atol=1e-6, err_msg=k)
  paired = inference.sample_masks(g_params, a_params, w_avg, key, 3, 3, independent_bg=False,
                                  **kw)
  np.testing.assert_allclose(paired["image"], out["image"], atol=1e-6)
  assert np.max(np.abs(paired["background"] - out["background"])) > 1e-3
