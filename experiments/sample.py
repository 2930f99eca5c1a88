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

from l4f_jax.system.sampling import SampleError, sample
from l4f_jax.system.weights import WeightsError

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


def main(argv):

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
