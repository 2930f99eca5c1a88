"""Masks from a trained alpha network (official `test_sample.py`, RameenAbdal/Labels4Free test_sample.py).

  out = sample_masks(g_params, alpha_params, w_avg, key, n=64, batch=8, generator=G, alpha_net=A)

For sample i, z_i (foreground), z'_i (background) and their per-layer noise maps come from
`fold_in(key, i)` only, so the pictures do not depend on `batch` or on where they are computed:
  image      = G(z_i; psi, w_avg)                  (its features feed A)
  background = G_bg(z'_i; psi, w_avg)              (independent_bg, the official sampling), or
               G_bg(z_i; psi, w_avg) with its own noise (the training loop's pairing)
  alpha      = A(features)                         soft mask in (0, 1)
  hard_mask  = alpha > threshold                   (strict, official --th 0.9)
  composite  = alpha image + (1 - alpha) background
Shared by experiments.train (sample grids, end-of-run evaluation), sample and evaluate.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import Generator, make_noise
from l4f_jax.method import masks

_FG, _BG, _BG_SAME_Z = 0, 1, 2  # fold_in streams of a sample's key


def _draw(key, stream: int, generator: Generator):
  """(z [style_dim], noise maps [r, r, 1]) of one sample and one stream."""
  kz, kn = jax.random.split(jax.random.fold_in(key, stream))
  noise = [x[0] for x in make_noise(kn, generator.size, 1)]
  return jax.random.normal(kz, (generator.style_dim,)), noise


@functools.partial(jax.jit, static_argnames=("generator", "alpha_net", "truncation", "threshold",
                                             "independent_bg", "background_mode", "background"))
def sample_batch(g_params, alpha_params, w_avg, keys, *, generator: Generator,
                 alpha_net: AlphaNetwork, truncation: float = 0.5,
                 threshold: float = masks.HARD_MASK_THRESHOLD,
                 independent_bg: bool = True, background_mode: str = "auto",
                 background: bool = True, const_noise=None) -> dict:
  """One jitted batch: keys [B] (one per sample) -> dict of [B, ...] device arrays (module doc).

  `background=False` skips the G_bg pass (image, alpha and hard_mask only; needs `alpha_net`).
  `const_noise`: the generator's stored noise maps [1, r, r, 1] used for every sample and G_bg
  instead of drawn noise (NVIDIA's noise_mode='const'); None = drawn noise.
  """
  def draw(stream):
    z, noise = jax.vmap(lambda k: _draw(k, stream, generator))(keys)
    return z, (noise if const_noise is None else list(const_noise))
  z, noise = draw(_FG)
  image, feats = generator.apply({"params": g_params}, z, truncation=truncation,
                                 truncation_latent=w_avg, noise=noise)
  if not background:
    alpha = alpha_net.apply({"params": alpha_params}, select_features(feats, generator.size))
    return {"image": image, "alpha": alpha, "hard_mask": masks.hard_mask(alpha[..., 0], threshold)}
  z_bg, noise_bg = draw(_BG)
  if not independent_bg:
    z_bg, noise_bg = z, draw(_BG_SAME_Z)[1]
  background, _ = generator.apply({"params": g_params}, z_bg, truncation=truncation,
                                  truncation_latent=w_avg, noise=noise_bg, background=True,
                                  background_mode=background_mode)
  if alpha_net is None:  # generator only (experiments.sample without --alpha)
    return {"image": image, "background": background}
  alpha = alpha_net.apply({"params": alpha_params}, select_features(feats, generator.size))
  return {"image": image, "background": background, "alpha": alpha,
          "hard_mask": masks.hard_mask(alpha[..., 0], threshold),
          "composite": alpha * image + (1 - alpha) * background}


def sample_masks(g_params, alpha_params, w_avg, key, n: int, batch: int = 8, *,
                 generator: Generator, alpha_net: AlphaNetwork, truncation: float = 0.5,
                 threshold: float = masks.HARD_MASK_THRESHOLD, independent_bg: bool = True,
                 background_mode: str = "auto", const_noise=None) -> dict:
  """n samples as numpy arrays: image, background, composite [n, S, S, 3] in [-1, 1] (unclamped),
  alpha [n, S, S, 1] float32, hard_mask [n, S, S] bool (only image and background when
  `alpha_net` is None).

  Runs `sample_batch` on batches of `batch` (the last one padded, so one shape compiles). Pass
  host-local parameters (numpy or single-device arrays): a process may then call this alone.
  w_avg: [1, style_dim], used when truncation < 1.
  """
  if n < 1 or batch < 1:
    raise ValueError(f"sample_masks: n ({n}) and batch ({batch}) must be >= 1")
  kw = dict(generator=generator, alpha_net=alpha_net, truncation=float(truncation),
            threshold=float(threshold), independent_bg=bool(independent_bg),
            background_mode=background_mode)
  fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
  chunks: dict[str, list] = {}
  for start in range(0, n, batch):
    keys = fold(key, jnp.arange(start, start + batch))
    out = jax.device_get(sample_batch(g_params, alpha_params, w_avg, keys, const_noise=const_noise,
                                      **kw))
    for k, v in out.items():
      chunks.setdefault(k, []).append(np.asarray(v)[:n - start])
  return {k: np.concatenate(v) for k, v in chunks.items()}
