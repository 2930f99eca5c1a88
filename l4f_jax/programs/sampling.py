"""Sampling a converted generator to pictures: image grids, G_bg grids and, with an alpha network,
the official test_sample.py outputs (RameenAbdal/Labels4Free, test_sample.py).

  from l4f_jax.config import resolve
  from l4f_jax.programs.sampling import SampleConfig, sample
  paths = sample(resolve(SampleConfig, generator="weights/ffhq", out="/tmp/samples", n=4))

`experiments/sample.py` is its CLI (flags derived from SampleConfig), whose docstring lists the
files written. The pictures are assembled in a temporary folder next to `out` and renamed into
place at the end, so an interrupted run leaves nothing half-written. An existing non-empty `out`
is refused unless `overwrite`, and even then only a folder of sample pictures is replaced.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

import jax
import numpy as np

from l4f_jax.config import option
from l4f_jax.method import inference, masks
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.io import files, images
from l4f_jax.system import training, weights
from l4f_jax.errors import UserError

# Every file `sample` writes: the grids and the per-sample PNGs of the alpha outputs.
_OUTPUT_NAME = re.compile(r"(images|backgrounds|alpha_grid|\d{6}_(original|background|alpha_mask|"
                          r"hard_mask|composite))\.png")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Every option of a sampling run."""
  generator: str = option("", "Converted weight directory (generator).", nonempty=True)
  n: int = option(16, "Number of samples.", ge=1)
  truncation: float = option(0.7, "Truncation psi (1 = none).", gt=0)
  seed: int = option(0, "PRNG seed (samples and w_avg).")
  out: str = option("", "Output directory (created if needed).", nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out that holds sample pictures "
                           "(atomically: the new pictures are written next to it first).")
  background: bool = option(False, "Also write backgrounds.png (G_bg).")
  background_mode: str = option("auto", "G_bg variant: auto = official (input at 512 px, else "
                                "conv1).", choices=("auto", "conv1", "input"))
  alpha: Optional[str] = option(None, "Weight directory with a trained alpha network.")
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold.", ge=0, le=1)
  batch: int = option(8, "Samples per jitted call.", ge=1)
  use_latent_avg: bool = option(False, "Use the checkpoint's latent_avg instead of the 4096-z "
                                "mean.")
  grid_cols: int = option(8, "Samples per grid row.", ge=1)
  noise_mode: str = option("random", training.NOISE_MODE_HELP, choices=training.NOISE_MODES)


def _rows(x, ncols: int) -> list:
  return [x[i:i + ncols] for i in range(0, len(x), ncols)]


def check_out(out: str, overwrite: bool) -> str:
  """The absolute --out after refusing a file, an unwritable place, or an existing non-empty
  folder (without `overwrite`, or with it when the folder holds anything but sample pictures)."""
  files.check_writable_dir(out, "--out")
  out = os.path.abspath(out)
  parent = os.path.dirname(out)
  if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"--out={out}: {parent} is not writable (the pictures are written next to "
                    "--out first); pass a --out in a writable folder")
  present = sorted(os.listdir(out)) if os.path.isdir(out) else []
  if present and not overwrite:
    raise UserError(f"--out={out} already holds {len(present)} file(s) (e.g. {present[0]}); "
                    "choose a new --out or pass --overwrite to replace it")
  other = [f for f in present
           if not (_OUTPUT_NAME.fullmatch(f) and os.path.isfile(os.path.join(out, f)))]
  if other:
    raise UserError(f"--out={out} holds other files than sample pictures (e.g. {other[0]}); "
                    "refusing to replace it, choose a new --out")
  return out


def sample(cfg: SampleConfig) -> list[str]:
  """Writes the sample pictures of `cfg` into `cfg.out`; returns the paths written."""
  files.check_disjoint(cfg.out, [("--generator", cfg.generator), ("--alpha", cfg.alpha)])
  out = check_out(cfg.out, cfg.overwrite)
  gen = weights.load_generator(cfg.generator)
  alpha_net, a_params = None, None
  if cfg.alpha:
    alpha_net, a_params = AlphaNetwork(gen.size), weights.load_alpha(cfg.alpha, gen)
  if cfg.use_latent_avg:
    if "latent_avg" not in gen.trees:
      raise UserError(f"--use_latent_avg: {cfg.generator} has no latent_avg; drop the flag")
    w_avg = gen.trees["latent_avg"]
  else:
    w_avg = training.generator_w_avg(gen, cfg.seed)
  k_samples = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]
  # Backgrounds: G_bg of the same z (its own noise) without --alpha; with --alpha, G_bg of an
  # independent z' as the official test_sample.py.
  outs = inference.sample_masks(gen.params, a_params, w_avg, k_samples, cfg.n, cfg.batch,
                                generator=gen.module, alpha_net=alpha_net,
                                truncation=cfg.truncation, threshold=cfg.threshold,
                                independent_bg=alpha_net is not None,
                                background_mode=cfg.background_mode,
                                const_noise=training.generator_noise(gen, cfg.noise_mode))
  bad = [k for k, v in outs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
         and not np.all(np.isfinite(v))]
  if bad:
    raise UserError(f"--generator={cfg.generator}: the samples are not finite ({', '.join(bad)}); "
                    "nothing was written")
  with files.staged(out, program="sample") as st:
    names = _write(st.path, outs, cfg, alpha_net is not None)
    check_out(out, cfg.overwrite)  # again: something may have appeared there meanwhile
    st.commit()
  return [os.path.join(out, name) for name in names]


def _write(folder: str, outs: dict, cfg: SampleConfig, with_alpha: bool) -> list[str]:
  """Writes the pictures of `outs` into `folder`; returns their file names."""
  names = []

  def grid(name, arrays):
    rows = [r for group in zip(*[_rows(a, cfg.grid_cols) for a in arrays]) for r in group]
    images.save_png(os.path.join(folder, name),
                    images.make_grid(rows, ncols=min(cfg.grid_cols, cfg.n)))
    names.append(name)

  grid("images.png", [outs["image"]])
  if cfg.background:
    grid("backgrounds.png", [outs["background"]])
  if with_alpha:
    kinds = (("original", "image"), ("background", "background"), ("alpha_mask", "alpha"),
             ("hard_mask", "hard_mask"), ("composite", "composite"))
    for i in range(cfg.n):
      for suffix, k in kinds:
        name = f"{i:06d}_{suffix}.png"
        images.save_png(os.path.join(folder, name),
                        outs[k][i].astype(np.float32) if k == "hard_mask" else outs[k][i])
        names.append(name)
    grid("alpha_grid.png", [outs[k] for k in ("image", "alpha", "hard_mask", "background",
                                               "composite")])
  return names
