r"""Samples a converted generator, optionally with G_bg and a Labels4Free alpha network.

  python -m experiments.sample --generator=weights/ffhq --n=16 --truncation=0.7 --out=samples
  python -m experiments.sample --generator=weights/cat --alpha=weights/l4f_cat --truncation=0.5 \
      --n=64 --out=test_sample

Outputs in --out:
  images.png        grid of G(z) at psi = --truncation.
  backgrounds.png   (--background) grid of G_bg: without --alpha for the *same* z as images.png,
                    cell for cell, with its own noise (the training loop's pairing); with --alpha
                    the independent z' below.
  with --alpha, the official test_sample.py outputs (labels4free.md §12), where the background
  comes from an *independent* z' (as official sampling does), both passes at psi:
    {i:06d}_original.png, _background.png (G_bg(z')), _alpha_mask.png (alpha * 255),
    _hard_mask.png (alpha > --threshold, strict), _composite.png (fg * alpha + (1 - alpha) * bg),
    alpha_grid.png    rows image / alpha / hard mask / background / composite; groups of
                      --grid_cols samples.

w_avg is the mean of w over 4096 z (as the official code), or the checkpoint's 'latent_avg' with
--use_latent_avg. Sample i depends only on (--seed, i): its z and per-layer noise come from
fold_in(key, i), so --batch does not change the pictures.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

_GENERATOR = flags.DEFINE_string("generator", None, "Converted weight directory (generator).")
_N = flags.DEFINE_integer("n", 16, "Number of samples.")
_TRUNCATION = flags.DEFINE_float("truncation", 0.7, "Truncation psi (1 = none).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created if needed).")
_BACKGROUND = flags.DEFINE_bool("background", False, "Also write backgrounds.png (G_bg).")
_BACKGROUND_MODE = flags.DEFINE_enum("background_mode", "auto", ["auto", "conv1", "input"],
                                     "G_bg variant: auto = official (input at 512 px, else conv1).")
_ALPHA = flags.DEFINE_string("alpha", None, "Weight directory with a trained alpha network.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.9, "Hard mask = alpha > threshold.")
_BATCH = flags.DEFINE_integer("batch", 8, "Samples per jitted call.")
_USE_LATENT_AVG = flags.DEFINE_bool("use_latent_avg", False,
                                    "Use the checkpoint's latent_avg instead of the 4096-z mean.")
_GRID_COLS = flags.DEFINE_integer("grid_cols", 8, "Samples per grid row.")
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
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from l4f_jax.method import inference  # noqa: PLC0415
  from l4f_jax.models.alpha import AlphaNetwork  # noqa: PLC0415
  from l4f_jax.models.stylegan2 import mean_latent  # noqa: PLC0415
  from l4f_jax.system import images, weights  # noqa: PLC0415

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


def main(argv):
  from l4f_jax.system.weights import WeightsError  # noqa: PLC0415

  try:
    if len(argv) > 1:
      raise SampleError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    if not _GENERATOR.value or not _OUT.value:
      raise SampleError("--generator=<weight dir> and --out=<dir> are required")
    paths = sample(_GENERATOR.value, _OUT.value, _N.value, _TRUNCATION.value, _SEED.value,
                   _BACKGROUND.value, _BACKGROUND_MODE.value, _ALPHA.value, _THRESHOLD.value,
                   _BATCH.value, _USE_LATENT_AVG.value, _GRID_COLS.value)
  except (SampleError, WeightsError) as e:
    sys.exit(f"sample: error: {e}")
  grids = [p for p in paths if not os.path.basename(p)[:6].isdigit()]
  print(f"wrote {len(paths)} pictures to {_OUT.value}: "
        f"{', '.join(os.path.basename(p) for p in grids)}"
        + (f" and {len(paths) - len(grids)} per-sample PNGs" if len(paths) > len(grids) else ""))


if __name__ == "__main__":
  app.run(main)
