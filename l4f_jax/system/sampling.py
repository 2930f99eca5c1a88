"""Sampling a converted generator to pictures: image grids, G_bg grids and, with an alpha network,
the official test_sample.py outputs (labels4free.md §12). `experiments/sample.py` is its CLI, whose
docstring lists the files written.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from l4f_jax.method import inference
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.models.stylegan2 import mean_latent
from l4f_jax.system import images, weights

N_MEAN_LATENT = 4096


class SampleError(Exception):
  """Bad input; the message is one line naming the flag and the fix."""


def _rows(x, ncols: int) -> list:
  return [x[i:i + ncols] for i in range(0, len(x), ncols)]


def sample(generator_dir: str, out_dir: str, n: int = 16, truncation: float = 0.7, seed: int = 0,
           background: bool = False, background_mode: str = "auto", alpha_dir=None,
           threshold: float = 0.9, batch: int = 8, use_latent_avg: bool = False,
           grid_cols: int = 8) -> list[str]:
  """Writes the sample pictures; returns the paths written."""
  if n < 1 or batch < 1 or grid_cols < 1:
    raise SampleError(f"--n ({n}), --batch ({batch}) and --grid_cols ({grid_cols}) must be >= 1")
  if not 0.0 <= threshold <= 1.0:
    raise SampleError(f"--threshold={threshold} must lie in [0, 1]")
  if truncation <= 0:
    raise SampleError(f"--truncation={truncation} must be > 0 (1 = no truncation)")
  config, trees = weights.load_weights(generator_dir)
  g_params = weights.generator_params(trees, generator_dir)
  generator = weights.generator_from_config(config)
  alpha_net, a_params = None, None
  if alpha_dir:
    a_config, a_trees = ((config, trees) if os.path.abspath(alpha_dir) == os.path.abspath(
        generator_dir) else weights.load_weights(alpha_dir))
    if "alpha" not in a_trees:
      raise SampleError(f"--alpha={alpha_dir} holds no alpha network (it has {sorted(a_trees)})")
    if a_config.get("size") != generator.size:
      raise SampleError(f"--alpha={alpha_dir} is for {a_config.get('size')} px but --generator is "
                        f"{generator.size} px")
    alpha_net, a_params = AlphaNetwork(generator.size), a_trees["alpha"]
  key = jax.random.PRNGKey(seed)
  k_mean, k_samples = jax.random.split(key)
  if use_latent_avg:
    if "latent_avg" not in trees:
      raise SampleError(f"--use_latent_avg: {generator_dir} has no latent_avg; drop the flag")
    w_avg = trees["latent_avg"]
  else:
    w_avg = jax.jit(lambda p, k: mean_latent(generator, p, k, N_MEAN_LATENT))(g_params, k_mean)
  # Backgrounds: G_bg of the same z (its own noise) without --alpha; with --alpha, G_bg of an
  # independent z' as the official test_sample.py.
  outs = inference.sample_masks(g_params, a_params, w_avg, k_samples, n, batch, generator=generator,
                                alpha_net=alpha_net, truncation=truncation, threshold=threshold,
                                independent_bg=alpha_net is not None,
                                background_mode=background_mode)
  os.makedirs(out_dir, exist_ok=True)
  written = []

  def grid(name, arrays):
    rows = [r for group in zip(*[_rows(a, grid_cols) for a in arrays]) for r in group]
    path = os.path.join(out_dir, name)
    images.save_png(path, images.make_grid(rows, ncols=min(grid_cols, n)))
    written.append(path)

  grid("images.png", [outs["image"]])
  if background:
    grid("backgrounds.png", [outs["background"]])
  if alpha_net is not None:
    names = (("original", "image"), ("background", "background"), ("alpha_mask", "alpha"),
             ("hard_mask", "hard_mask"), ("composite", "composite"))
    for i in range(n):
      for suffix, k in names:
        path = os.path.join(out_dir, f"{i:06d}_{suffix}.png")
        images.save_png(path, outs[k][i].astype(np.float32) if k == "hard_mask" else outs[k][i])
        written.append(path)
    grid("alpha_grid.png", [outs[k] for k in ("image", "alpha", "hard_mask", "background",
                                               "composite")])
  return written
