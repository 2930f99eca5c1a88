r"""Samples a converted generator, optionally with G_bg and a Labels4Free alpha network.

  python -m experiments.sample --generator=weights/ffhq --n=16 --truncation=0.7 --out=samples
  python -m experiments.sample --generator=weights/cat --alpha=weights/l4f_cat --truncation=0.5 \
      --n=64 --out=test_sample

Outputs in --out (a new or empty directory; --overwrite replaces one holding earlier samples, the
new pictures being written next to it and renamed into place):
  images.png        grid of G(z) at psi = --truncation.
  backgrounds.png   (--background) grid of G_bg: without --alpha for the *same* z as images.png,
                    cell for cell, with its own noise (the training loop's pairing); with --alpha
                    the independent z' below.
  with --alpha, the official test_sample.py outputs (RameenAbdal/Labels4Free, test_sample.py), where the background
  comes from an *independent* z' (as official sampling does), both passes at psi:
    {i:06d}_original.png, _background.png (G_bg(z')), _alpha_mask.png (alpha * 255),
    _hard_mask.png (alpha > --threshold, strict), _composite.png (fg * alpha + (1 - alpha) * bg),
    alpha_grid.png    rows image / alpha / hard mask / background / composite; groups of
                      --grid_cols samples.

w_avg is the training program's w-bar (the mean of w over 4096 z from --seed's 'w_avg' stream,
`l4f_jax.system.training.w_avg`), or the checkpoint's 'latent_avg' with --use_latent_avg. Sample i
depends only on (--seed, i): its z and per-layer noise come from fold_in(key, i), so --batch does
not change the pictures. The flags are the fields of `l4f_jax.programs.sampling.SampleConfig`.
"""
from __future__ import annotations

import os


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.sampling import SampleConfig, sample

define_flags(SampleConfig)


@cli.main("sample")
def main(argv):
  del argv
  cfg = from_flags(SampleConfig)
  paths = sample(cfg)
  grids = [p for p in paths if not os.path.basename(p)[:6].isdigit()]
  print(f"wrote {len(paths)} picture{'' if len(paths) == 1 else 's'} to {cfg.out}: "
        f"{', '.join(os.path.basename(p) for p in grids)}"
        + (f" and {len(paths) - len(grids)} per-sample PNGs" if len(paths) > len(grids) else ""))


if __name__ == "__main__":
  cli.run(main)
