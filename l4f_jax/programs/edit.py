"""Edits that keep the background (`experiments.edit`): SeFa directions + Labels4Free compositing.

  from l4f_jax.config import resolve
  from l4f_jax.programs.edit import EditConfig, edit
  summary = edit(resolve(EditConfig, latents="workspace/invert/photos", direction=0, strength=3,
                         out="workspace/edit/photos"))

Originals are G(w, noise) of inverted latents (`--latents`: an `experiments.invert` output or its
latents/ folder; each <stem>.npy is w [D] or w+ [n_latent, D], its noise maps are read from the
sibling noise/<stem>.npz when present) or of seeds (`--seeds=0,1,2`: z ~ N(0, I) from
jax.random.key(seed), truncation psi around the one w-bar, noise maps from fold_in(key(seed), 1)).
Each is moved along SeFa direction `--direction` (0 = largest eigenvalue) by `--strength`:

  naive      = G(w')
  preserved  = alpha' G(w') + (1 - alpha') B,  alpha' = A(G(w')),
  B          = the original, completed inside dilate(alpha > --fill_threshold, --dilate) by
               g_bg:    G_bg(w) of the same latent and noise (Labels4Free's background generator)
               inpaint: biharmonic inpainting of the original (scikit-image)

Outputs (<name> = the latent's stem or seed<k>):
  <out>/original/<name>.png, <out>/masks/<name>.png (A's hard mask of the original, alpha > 0.9),
  <out>/naive/<name>.png, <out>/preserved/<name>.png (with --completion),
  <out>/background/<name>.png (its B), <out>/edited_masks/<name>.png, <out>/grid.png (rows
  original / mask / naive edit / preserved edit / difference |preserved - original| x4 / naive
  difference x4), <out>/metrics.json:
  "background_psnr": {"naive": dB, "preserved": dB (--completion), "preserved_by_completion":
  {"g_bg": dB, "inpaint": dB}}, pooled over the pixels that are background in BOTH the original's
  and the edit's hard masks, per-image values, the direction's eigenvalue and the settings.
Written to a staging folder next to `out` and renamed into place (`files.staged`); `--out` may not
be, hold or lie inside --latents, and an existing `out` is replaced only with `overwrite` and only
when it is an earlier edit output. Every edit is computed before the first picture is written, so
a killed run's staging folder holds nothing to resume from: the next run removes it, saying so.
A non-finite edit stops the run with one line.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.config import option, to_dict
from l4f_jax.method import editing, inversion, masks
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import make_noise, noise_shapes, num_latents
from l4f_jax.io import files, images
from l4f_jax.system import metrics_log, training
from l4f_jax.errors import UserError
from l4f_jax.system.weights import LoadedGenerator, load_alpha, load_generator

SUMMARY = "metrics.json"
OUTPUTS = ("original", "masks", "naive", "preserved", "background", "edited_masks", "grid.png",
           SUMMARY)
COMPLETIONS = ("inpaint", "g_bg")


@dataclasses.dataclass(frozen=True)
class EditConfig:
  generator: str = option("experiments/assets/shapes64", "Generator weight directory.",
                          nonempty=True)
  alpha: str = option("workspace/runs/shapes/alpha", "Alpha export trained on --generator.",
                      nonempty=True)
  latents: str = option("", "An experiments.invert output (or its latents/ folder) of <stem>.npy "
                        "latents; or pass --seeds.")
  seeds: str = option("", "Comma-separated seeds of generated originals (instead of --latents).")
  truncation: float = option(0.7, "Truncation psi of the --seeds originals.", gt=0, le=1)
  direction: int = option(0, "SeFa direction index (0 = largest eigenvalue).", ge=0)
  strength: float = option(3.0, "Step along the direction (the shipped 64 px generator's w lie "
                           "about 9 from w-bar; 3 changes the object visibly).")
  completion: str = option("inpaint", "Background completion of the preserved edit written to "
                           "preserved/ (both are measured).", choices=COMPLETIONS)
  fill_threshold: float = option(0.5, "Alpha above which the original's object region is "
                                 "completed (see --dilate).", ge=0, lt=1)
  dilate: int = option(0, "Pixels by which the completed region (alpha > --fill_threshold) is "
                       "dilated.", ge=0)
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold (official "
                            "rule).", ge=0, lt=1)
  out: str = option("", "Output directory.", nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out.")
  batch: int = option(16, "Originals per program.", ge=1)
  seed: int = option(0, "Seed of w-bar (truncation) and of the noise of latents without noise "
                     "maps.")
  grid_items: int = option(16, "Originals shown in grid.png (0 = none).", ge=0)


def _parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise UserError(f"--seeds={text!r}: expected comma-separated integers, e.g. --seeds=0,1,2"
                    ) from None
  if not seeds:
    raise UserError(f"--seeds={text!r}: no seeds given, e.g. --seeds=0,1,2")
  return seeds


def _latent_dir(path: str) -> str:
  if not os.path.isdir(path):
    raise UserError(f"--latents={path} is not a folder; pass an experiments.invert output")
  sub = os.path.join(path, "latents")
  return sub if os.path.isdir(sub) else path


def load_latents(path: str, gen: LoadedGenerator, seed: int):
  """(names, latents [N, D] or [N, n_latent, D], noise maps [N, r, r, 1] each) of a folder."""
  folder = _latent_dir(path)
  files = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
  if not files:
    raise UserError(f"--latents={path}: no <stem>.npy latents in {folder}; pass an "
                    "experiments.invert output")
  d, n_lat = gen.module.style_dim, num_latents(gen.size)
  names, lats, noises = [], [], []
  noise_dir = os.path.join(os.path.dirname(os.path.abspath(folder)), "noise")
  shapes = noise_shapes(gen.size, 1)
  for k, f in enumerate(files):
    full = os.path.join(folder, f)
    try:
      lat = np.load(full, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise UserError(f"--latents: {full} is not a readable .npy array ({e}); replace or remove "
                      "it") from None
    if lat.shape not in ((d,), (n_lat, d)) or not np.all(np.isfinite(lat)):
      raise UserError(f"--latents: {full} holds shape {lat.shape}, expected finite w [{d}] or w+ "
                      f"[{n_lat}, {d}] for --generator={gen.path}")
    if lats and lat.shape != lats[0].shape:
      raise UserError(f"--latents: {full} has shape {lat.shape} but {files[0]} has "
                      f"{lats[0].shape}; keep w and w+ latents in separate folders")
    stem = f[:-4]
    npz = os.path.join(noise_dir, f"{stem}.npz")
    if os.path.exists(npz):
      try:
        with np.load(npz, allow_pickle=False) as z:
          maps = [np.asarray(z[f"n{j}"], np.float32) for j in range(len(shapes))]
      except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--latents: noise file {npz} is unreadable ({e}); replace or remove "
                        "it") from None
      if [m.shape for m in maps] != [s[1:] for s in shapes]:
        raise UserError(f"--latents: noise file {npz} does not match a {gen.size} px generator")
    else:
      key = jax.random.fold_in(training.stream_key(seed, "edit"), k)
      maps = [np.asarray(m[0]) for m in make_noise(key, gen.size, 1)]
    names.append(stem)
    lats.append(lat.astype(np.float32))
    noises.append(maps)
  return names, np.stack(lats), [np.stack(m) for m in zip(*noises)]


def seed_latents(seeds: list[int], gen: LoadedGenerator, truncation: float, seed: int):
  """(names, w [N, D] with truncation psi around w-bar, noise maps) of seeded originals."""
  G = gen.module
  w_avg = training.generator_w_avg(gen, seed)
  z = np.stack([np.asarray(jax.random.normal(jax.random.key(s), (G.style_dim,))) for s in seeds])
  w = G.apply({"params": gen.params}, jnp.asarray(z), method=G.mapping)
  w = np.asarray(w_avg + truncation * (w - w_avg), np.float32)
  noise = [make_noise(jax.random.fold_in(jax.random.key(s), 1), G.size, 1) for s in seeds]
  return [f"seed{s}" for s in seeds], w, [np.concatenate(m) for m in zip(*noise)]


@functools.partial(jax.jit, static_argnames=("generator", "alpha_net"))
def _render(g_params, a_params, latent, noise, direction, strength, *, generator, alpha_net):
  """Original, its alpha and G_bg, and the naive edit with its alpha, of one batch."""
  def run(lat, background=False):
    img, feats = inversion.synthesize(lat, noise, g_params, generator=generator,
                                      background=background)
    return img, (None if background else
                 alpha_net.apply({"params": a_params}, select_features(feats, generator.size)))
  image, alpha = run(latent)
  g_bg, _ = run(latent, background=True)
  edited, alpha_edit = run(editing.apply_direction(latent, direction, strength))
  return dict(image=image, alpha=alpha, g_bg=g_bg, edited=edited, alpha_edit=alpha_edit)


def edit_arrays(gen: LoadedGenerator, alpha_params, latents, noise, direction, cfg: EditConfig
                ) -> dict:
  """All pictures and per-image squared errors of the edit of latents [N, ...] (NumPy dict)."""
  A = AlphaNetwork(gen.size)
  parts = []
  for s in range(0, len(latents), cfg.batch):
    lat = latents[s:s + cfg.batch]
    nz = [m[s:s + cfg.batch] for m in noise]
    pad = cfg.batch - len(lat)
    if pad:
      lat = np.concatenate([lat, np.repeat(lat[-1:], pad, 0)])
      nz = [np.concatenate([m, np.repeat(m[-1:], pad, 0)]) for m in nz]
    r = jax.device_get(_render(gen.params, alpha_params, jnp.asarray(lat),
                               [jnp.asarray(m) for m in nz], jnp.asarray(direction, jnp.float32),
                               jnp.float32(cfg.strength), generator=gen.module, alpha_net=A))
    parts.append({k: np.asarray(v)[:cfg.batch - pad] for k, v in r.items()})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  fill = np.asarray(editing.fill_region(out["alpha"], cfg.fill_threshold, cfg.dilate))
  completions = {"g_bg": out["g_bg"], "inpaint": editing.inpaint(out["image"], fill)}
  keep = editing.background_pixels(out["alpha"], out["alpha_edit"], cfg.threshold)
  out["sse_naive"], out["count"] = editing.masked_sse(out["edited"], out["image"], keep)
  for name, completion in completions.items():
    bg = editing.complete_background(out["image"], completion, fill)
    out[f"background_{name}"] = np.asarray(bg)
    out[f"preserved_{name}"] = np.asarray(editing.composite(out["alpha_edit"], out["edited"], bg))
    out[f"sse_{name}"], _ = editing.masked_sse(out[f"preserved_{name}"], out["image"], keep)
  return jax.tree.map(np.asarray, out)


def _difference(x, ref):
  """|x - ref| averaged over channels, on the [0, 1] scale, x4 and clipped: [N, H, W] in [0, 1]."""
  return np.clip(4 * np.mean(np.abs(np.clip(x, -1, 1) - np.clip(ref, -1, 1)) * 0.5, -1), 0, 1)


def edit(cfg: EditConfig) -> dict:
  """Edits every original (module docstring); returns the summary written to metrics.json."""
  if bool(cfg.latents) == bool(cfg.seeds):
    raise UserError("pass exactly one of --latents=DIR (an experiments.invert output) and "
                    "--seeds=0,1,2")
  seeds = _parse_seeds(cfg.seeds) if cfg.seeds else None
  if importlib.util.find_spec("skimage") is None:
    raise UserError("the inpainting completion needs scikit-image, which is not installed; run "
                    "pip install -r requirements.txt")
  out_dir = files.check_output_dir(cfg.out, cfg.overwrite, program="edit", summary=SUMMARY,
                                   owned=OUTPUTS, inputs=[("--latents", cfg.latents)])
  gen = load_generator(cfg.generator)
  alpha_params = load_alpha(cfg.alpha, gen)
  if cfg.direction >= gen.module.style_dim:
    raise UserError(f"--direction={cfg.direction} must be < {gen.module.style_dim} (the "
                    "generator's style_dim: there is one SeFa direction per dimension)")
  if seeds is not None:
    names, latents, noise = seed_latents(seeds, gen, cfg.truncation, cfg.seed)
  else:
    names, latents, noise = load_latents(cfg.latents, gen, cfg.seed)
  eigenvalues, directions = editing.sefa_directions(editing.modulation_matrix(gen.params))
  r = edit_arrays(gen, alpha_params, latents, noise, directions[:, cfg.direction], cfg)
  bad = [k for k in ("image", "edited", "alpha", "alpha_edit") if not np.all(np.isfinite(r[k]))]
  if bad:
    raise UserError(f"--generator={cfg.generator}: the edit is not finite ({', '.join(bad)}); "
                    "lower --strength, nothing was written")
  psnr = lambda key: editing.psnr_from_sse(r[key], r["count"])
  per_image = {n: {"naive": editing.psnr_from_sse(r["sse_naive"][k], r["count"][k]),
                   **{c: editing.psnr_from_sse(r[f"sse_{c}"][k], r["count"][k])
                      for c in COMPLETIONS}} for k, n in enumerate(names)}
  by_completion = {c: psnr(f"sse_{c}") for c in COMPLETIONS}
  summary = {"edited": len(names),
             "background_psnr": {"naive": psnr("sse_naive"),
                                 "preserved": by_completion[cfg.completion],
                                 "preserved_by_completion": by_completion},
             "background_psnr_per_image": per_image,
             "background_fraction": float(np.sum(r["count"]) / (3 * r["image"][..., 0].size)),
             "mask_change": float(np.mean(masks.hard_mask(r["alpha"], cfg.threshold)
                                          != masks.hard_mask(r["alpha_edit"], cfg.threshold))),
             "eigenvalue": float(eigenvalues[cfg.direction]),
             "generator": os.path.abspath(cfg.generator),
             "generator_fingerprint": gen.fingerprint, "config": to_dict(cfg)}
  with files.staged(out_dir, program="edit") as st:
    tmp = st.path
    hard = lambda a: masks.hard_mask(a[..., 0], cfg.threshold)
    pictures = {"original": r["image"], "masks": hard(r["alpha"]), "naive": r["edited"],
                "preserved": r[f"preserved_{cfg.completion}"],
                "background": r[f"background_{cfg.completion}"],
                "edited_masks": hard(r["alpha_edit"])}
    for folder, arr in pictures.items():
      for name, pic in zip(names, arr):
        images.save_png(os.path.join(tmp, folder, f"{name}.png"), pic)
    k = cfg.grid_items
    if k:
      preserved = r[f"preserved_{cfg.completion}"][:k]
      images.save_grid(os.path.join(tmp, "grid.png"), {
          "original": r["image"][:k], "its mask": hard(r["alpha"][:k]),
          "naive edit": r["edited"][:k],
          "preserved edit": preserved, "difference": _difference(preserved, r["image"][:k]),
          "naive difference": _difference(r["edited"][:k], r["image"][:k])})
    metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
    st.commit()
  return summary
