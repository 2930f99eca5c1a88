"""Edits that keep the background (`experiments.edit`): SeFa directions + Labels4Free compositing.

  from l4f_jax.config import resolve
  from l4f_jax.programs.edit import EditConfig, edit
  summary = edit(resolve(EditConfig, latents="workspace/invert/photos", direction=0, strength=3,
                         out="workspace/edit/photos"))

The original of each edit is
- the **photo** that was inverted, when `--latents` is an `experiments.invert` output: invert
  records each photo's file and size in its metrics.json ("sources"); `--images` points at the
  photos elsewhere (a folder of <stem>.<ext> files, or a split holding images/);
- G(w, noise) otherwise: bare latents (a folder of <stem>.npy, or an inversion written before
  invert recorded its photos) and seeds (`--seeds=0,1,2`: z ~ N(0, I) from jax.random.key(seed),
  truncation psi around the one w-bar, noise maps from fold_in(key(seed), 1)).
Latents: each <stem>.npy is w [D] or w+ [n_latent, D]; its noise maps are read from the sibling
noise/<stem>.npz when present. Each latent is moved along SeFa direction `--direction`
(0 = largest eigenvalue) by `--strength`, and, at the original's own size (G's outputs and A's
alphas resized where the sizes differ: `image_io.resize_image`, `image_io.alpha_to_original`):

  naive      = G(w')
  preserved  = alpha' G(w') + (1 - alpha') B,  alpha' = A(G(w')),
  B          = the original, completed inside dilate(alpha > --fill_threshold, --dilate), alpha =
               A's mask of the inversion (of G(w)), by
               g_bg:    G_bg(w) of the same latent and noise (Labels4Free's background generator)
               inpaint: biharmonic inpainting of the original (scikit-image)

This is the paper's real-image edit (Labels4Free, section 3: segment, complete the background,
edit, segment the edit, composite onto the completed background of the photo).

Outputs (<name> = the latent's stem or seed<k>), each at the original's size:
  <out>/original/<name>.png (the photo or G(w)), <out>/masks/<name>.png (A's hard mask of the
  inversion, alpha > 0.9), <out>/naive/<name>.png, <out>/preserved/<name>.png (with
  --completion), <out>/background/<name>.png (its B), <out>/edited_masks/<name>.png,
  <out>/grid.png (rows photo or original / mask / naive edit / preserved edit / difference
  |preserved - original| x4 / naive difference x4, at G's size), <out>/metrics.json:
  "leakage_psnr": {"naive", "preserved" (--completion), "preserved_by_completion"} in dB against
  the original over the pixels that are background in BOTH hard masks (alpha <= 0.9 in the
  inversion and in the edit). It only checks that the edit leaves the rest of the original
  alone: with B = the original wherever alpha <= --fill_threshold it is mostly the input copied
  back, and it leaves out the region the object vacates.
  "true_background_psnr" (when --images is a split of the built-in world with backgrounds/, e.g.
  the real test or validation split): the naive and preserved edits (per completion) against the
  photo's true background (backgrounds/<stem>.png, the scene without its object) in
    photo_itself:    the photo against its true background by the same rule (its own object's
                     background): the figure a perfect edit would reach;
    edit_background: the background of the edited object as G(w') draws it (the world's colour
                     oracle, `datasets.shapes.oracle_mask`, on the naive edit, dilated by
                     --score_margin pixels, 1 by default: the object's anti-aliased rim, where
                     even the photo differs from its true background, is left out): a ghost of
                     the old object, or a wrong completion, counts against the edit;
    vacated:         the pixels of edit_background inside the photo's exact mask (masks/<stem>),
                     where only the completion can be right;
  with the pixel counts; "per_image" holds every image's dB, "mask_change" the fraction of
  pixels whose hard mask the edit changed (at G's size), and the direction's eigenvalue and the
  settings.
Written to a staging folder next to `out` and renamed into place (`files.staged`); `--out` may not
be, hold or lie inside --latents or --images, and an existing `out` is replaced only with `overwrite` and only
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

from typing import Optional

from l4f_jax.config import option, to_dict
from l4f_jax.datasets import shapes
from l4f_jax.method import editing, inversion, masks
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import make_noise, noise_shapes, num_latents
from l4f_jax.io import files, image_io, images
from l4f_jax.system import metrics_log, segmentation, training
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
  images: str = option("", "The photos of --latents' inversion when they are not where the "
                       "inversion read them: a folder of <stem>.<ext> images, or a split of the "
                       "built-in world (images/, masks/, backgrounds/: the real test or "
                       "validation split), whose masks and backgrounds score the edit against "
                       "the true background. Default: the files the inversion recorded.")
  truncation: float = option(0.7, "Truncation psi of the --seeds originals.", gt=0, le=1)
  direction: int = option(0, "SeFa direction index (0 = largest eigenvalue).", ge=0)
  strength: float = option(3.0, "Step along the direction (the shipped 64 px generator's w lie "
                           "about 9 from w-bar; 3 changes the object visibly).")
  completion: str = option("inpaint", "Background completion of the preserved edit written to "
                           "preserved/ (both are measured).", choices=COMPLETIONS)
  fill_threshold: float = option(0.5, "Alpha above which the original's object region is "
                                 "completed (see --dilate).", ge=0, lt=1)
  dilate: int = option(2, "Pixels by which the completed region (alpha > --fill_threshold) is "
                       "dilated (2: chosen on the built-in world's validation split with "
                       "--segmenter, docs/real_images.md).", ge=0)
  segmenter: str = option("", "A student segmenter (experiments.train_student, the pipeline's "
                          "<workdir>/segmenter, or its export): B is also completed where its "
                          "mask of the original is above --fill_threshold, which covers what "
                          "the inversion did not reconstruct.")
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold (official "
                            "rule).", ge=0, lt=1)
  score_margin: int = option(1, "With --images=<split>: pixels around the edited object left out "
                             "of its scored background (the object's anti-aliased rim, where the "
                             "photo itself differs from its true background).", ge=0)
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
  map_shapes = noise_shapes(gen.size, 1)
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
          maps = [np.asarray(z[f"n{j}"], np.float32) for j in range(len(map_shapes))]
      except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--latents: noise file {npz} is unreadable ({e}); replace or remove "
                        "it") from None
      if [m.shape for m in maps] != [s[1:] for s in map_shapes]:
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
  """G's pictures of the edit of latents [N, ...] at G's size (NumPy dict): image = G(w),
  alpha = A(G(w)), g_bg = G_bg(w), edited = G(w'), alpha_edit = A(G(w'))."""
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
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def compose(r: dict, k: int, original: np.ndarray, cfg: EditConfig,
            photo_alpha: Optional[np.ndarray] = None) -> dict:
  """The edit of original k at the original's own size ([h, w, 3] in [-1, 1]: a photo, or G(w)):
  A's alpha of the inversion and of G(w'), G(w') resized, the completed backgrounds B and the
  preserved edits per completion, and the leakage squared errors (module docstring). With
  `photo_alpha` [h, w] (a student's soft mask of the photo) B completes where either mask is
  above --fill_threshold."""
  hw = original.shape[:2]
  alpha = image_io.alpha_to_original(r["alpha"][k], hw)
  alpha_edit = image_io.alpha_to_original(r["alpha_edit"][k], hw)
  edited = image_io.resize_image(r["edited"][k], hw)
  fill_alpha = alpha if photo_alpha is None else np.maximum(alpha, photo_alpha)
  fill = np.asarray(editing.fill_region(fill_alpha[None], cfg.fill_threshold, cfg.dilate))
  fills = {"g_bg": image_io.resize_image(r["g_bg"][k], hw)[None],
           "inpaint": editing.inpaint(original[None], fill)}
  keep = editing.background_pixels(alpha[None], alpha_edit[None], cfg.threshold)
  sse, count = editing.masked_sse(edited[None], original[None], keep)
  out = dict(original=original, alpha=alpha, alpha_edit=alpha_edit, edited=edited,
             leakage={"naive": float(sse[0])}, count=float(count[0]))
  for name, completion in fills.items():
    bg = editing.complete_background(original[None], completion, fill)
    pres = editing.composite(alpha_edit[None], edited[None], bg)
    out[f"background_{name}"], out[f"preserved_{name}"] = np.asarray(bg[0]), np.asarray(pres[0])
    out["leakage"][name] = float(editing.masked_sse(pres, original[None], keep)[0][0])
  return out


def score_truth(item: dict, exact: np.ndarray, background: np.ndarray, margin: int = 1) -> dict:
  """Squared errors of the naive and preserved edits against the true background ([h, w, 3] in
  [-1, 1]) in region (i) `edit_background`: the background of the edited object as G(w') draws it
  (the built-in world's colour oracle on the naive edit, dilated by `margin` pixels: its
  anti-aliased rim is left out), and (ii) `vacated`: the pixels of (i) inside the photo's exact
  object mask `exact` [h, w]."""
  obj = editing.dilate(shapes.oracle_mask(item["edited"])[None], margin)[0]
  region = ~np.asarray(obj)
  regions = {"edit_background": region, "vacated": region & exact}
  out = {}
  for rname, mask in regions.items():
    pics = {"naive": item["edited"], **{c: item[f"preserved_{c}"] for c in COMPLETIONS}}
    out[rname] = {n: float(editing.masked_sse(p[None], background[None], mask[None])[0][0])
                  for n, p in pics.items()}
    out[rname]["count"] = 3.0 * float(mask.sum())
  # The ceiling: the photo itself over its own object's background, by the same rule.
  own = ~np.asarray(editing.dilate(shapes.oracle_mask(item["original"])[None], margin)[0])
  sse, count = editing.masked_sse(item["original"][None], background[None], own[None])
  out["photo_itself"] = {"photo": float(sse[0]), "count": float(count[0])}
  return out


# ------------------------------------------------------------------------------ photos


def _record(latents: str) -> Optional[dict]:
  """{stem: {"file", "size"}} that an experiments.invert output recorded, or None (bare latents,
  or an inversion written before invert recorded its photos)."""
  import json  # pylint: disable=import-outside-toplevel
  folder = os.path.abspath(_latent_dir(latents))
  root = os.path.dirname(folder) if os.path.basename(folder) == "latents" else folder
  try:
    with open(os.path.join(root, SUMMARY), encoding="utf-8") as f:
      sources = json.load(f).get("sources")
  except (OSError, ValueError, AttributeError):
    return None
  return sources if isinstance(sources, dict) else None


def _photo_paths(cfg: EditConfig, names: list, record: Optional[dict]):
  """(photo file per name or None, the split folder when --images is one, else None)."""
  if not cfg.images:
    if record is None:
      return None, None
    missing = [n for n in names if not isinstance(record.get(n), dict)]
    if missing:
      raise UserError(f"--latents={cfg.latents}: its inversion recorded no photo of "
                      f"{_listing(missing, names)}; pass --images=<the photos that were inverted>")
    return [record[n]["file"] for n in names], None
  split = os.path.isdir(os.path.join(cfg.images, "images"))
  folder = os.path.join(cfg.images, "images") if split else cfg.images
  if not os.path.isdir(folder):
    raise UserError(f"--images={cfg.images} is not a folder; pass the folder of the photos that "
                    "were inverted (or a split holding images/)")
  paths = image_io.walk_images(folder)
  by_stem = dict(zip(image_io.output_stems(paths, folder), paths))
  missing = [n for n in names if n not in by_stem]
  if missing:
    raise UserError(f"--images={cfg.images} holds no photo named like the latent(s) "
                    f"{_listing(missing, names)} of --latents; pass the photos that were inverted")
  return [by_stem[n] for n in names], (cfg.images if split else None)


def _listing(missing: list, names: list) -> str:
  shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
  return f"{shown} ({len(missing)} of {len(names)})"


def _read(path: str, what: str) -> np.ndarray:
  try:
    return image_io.read_rgb(path)
  except UserError as e:
    raise UserError(f"{what}: {e}") from None


def load_photos(cfg: EditConfig, names: list):
  """(photos [h, w, 3] in [-1, 1] per name, or None: the originals are then G(w); the truth
  {"exact": masks, "background": pictures} when --images is a split with backgrounds/, else
  None). A photo of another size than its inversion recorded is refused."""
  record = _record(cfg.latents)
  paths, split = _photo_paths(cfg, names, record)
  if paths is None:
    return None, None
  photos = []
  for n, p in zip(names, paths):
    rgb = _read(p, f"--latents={cfg.latents}: the photo of {n}")
    want = (record or {}).get(n, {}).get("size")
    if want is not None and list(rgb.shape[:2]) != list(want):
      raise UserError(f"{p} is {rgb.shape[1]}x{rgb.shape[0]} px but the inversion of {n} "
                      f"recorded {want[1]}x{want[0]}: not the photo that was inverted; pass "
                      "--images=<the photos that were inverted>")
    photos.append(rgb.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
  truth = None
  if split and os.path.isdir(os.path.join(split, shapes.BACKGROUNDS)):
    truth = {"exact": [], "background": []}
    for n, photo in zip(names, photos):
      exact = _read(os.path.join(split, "masks", f"{n}.png"), f"--images={split}")[..., 0] > 127
      bg = _read(os.path.join(split, shapes.BACKGROUNDS, f"{n}.png"), f"--images={split}")
      if exact.shape != photo.shape[:2] or bg.shape != photo.shape:
        raise UserError(f"--images={split}: the mask or background of {n} is not the size of "
                        "its image; rebuild the split")
      truth["exact"].append(exact)
      truth["background"].append(bg.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
  return photos, truth


def _difference(x, ref):
  """|x - ref| averaged over channels, on the [0, 1] scale, x4 and clipped: [N, H, W] in [0, 1]."""
  return np.clip(4 * np.mean(np.abs(np.clip(x, -1, 1) - np.clip(ref, -1, 1)) * 0.5, -1), 0, 1)


def _pooled(items: list, key: str, names: tuple, count: str = "count") -> dict:
  """Pooled PSNR per picture name of the per-image squared errors items[k][key][name]."""
  return {n: editing.psnr_from_sse([it[key][n] for it in items],
                                   [it[key][count] if count in it[key] else it[count]
                                    for it in items]) for n in names}


def _summary(items: list, names: list, r: dict, scores: Optional[list], cfg: EditConfig) -> dict:
  pics = ("naive",) + COMPLETIONS
  leak = _pooled(items, "leakage", pics)
  summary = {
      "edited": len(names),
      "leakage_psnr": {"naive": leak["naive"], "preserved": leak[cfg.completion],
                       "preserved_by_completion": {c: leak[c] for c in COMPLETIONS}},
      "leakage_fraction": float(sum(it["count"] for it in items) / sum(
          3 * it["original"][..., 0].size for it in items))}
  per_image = {n: {"leakage": {c: editing.psnr_from_sse(it["leakage"][c], it["count"])
                               for c in pics}} for n, it in zip(names, items)}
  if scores is not None:
    summary["true_background_psnr"] = {
        region: {**_pooled(scores, region, pics),
                 "pixels": int(sum(sc[region]["count"] for sc in scores) // 3)}
        for region in ("edit_background", "vacated")}
    summary["true_background_psnr"]["photo_itself"] = _pooled(scores, "photo_itself", ("photo",))
    for n, sc in zip(names, scores):
      per_image[n].update({region: {c: editing.psnr_from_sse(sc[region][c], sc[region]["count"])
                                    for c in pics} for region in ("edit_background", "vacated")})
  summary["per_image"] = per_image
  summary["mask_change"] = float(np.mean(masks.hard_mask(r["alpha"], cfg.threshold)
                                         != masks.hard_mask(r["alpha_edit"], cfg.threshold)))
  return summary


def _write(tmp: str, names: list, items: list, size: int, photo: bool, cfg: EditConfig) -> None:
  """The pictures of every edit (at each original's size) and grid.png (at G's size)."""
  hard = lambda a: masks.hard_mask(a, cfg.threshold)
  for name, it in zip(names, items):
    for folder, pic in (("original", it["original"]), ("masks", hard(it["alpha"])),
                        ("naive", it["edited"]), ("preserved", it[f"preserved_{cfg.completion}"]),
                        ("background", it[f"background_{cfg.completion}"]),
                        ("edited_masks", hard(it["alpha_edit"]))):
      images.save_png(os.path.join(tmp, folder, f"{name}.png"), pic)
  k = cfg.grid_items
  if not k:
    return
  cell = lambda x: image_io.resize_image(x, (size, size))
  rows = items[:k]
  first = "photo" if photo else "original"
  orig = np.stack([cell(it["original"]) for it in rows])
  preserved = np.stack([cell(it[f"preserved_{cfg.completion}"]) for it in rows])
  naive = np.stack([cell(it["edited"]) for it in rows])
  images.save_grid(os.path.join(tmp, "grid.png"), {
      first: orig,
      "its mask": np.stack([hard(image_io.alpha_to_original(it["alpha"], (size, size)))
                            for it in rows]),
      "naive edit": naive, "preserved edit": preserved,
      "difference": _difference(preserved, orig), "naive difference": _difference(naive, orig)})


def edit(cfg: EditConfig) -> dict:
  """Edits every original (module docstring); returns the summary written to metrics.json."""
  if bool(cfg.latents) == bool(cfg.seeds):
    raise UserError("pass exactly one of --latents=DIR (an experiments.invert output) and "
                    "--seeds=0,1,2")
  if cfg.images and not cfg.latents:
    raise UserError("--images goes with --latents (the photos that were inverted); --seeds "
                    "edits generated originals")
  seeds = _parse_seeds(cfg.seeds) if cfg.seeds else None
  if importlib.util.find_spec("skimage") is None:
    raise UserError("the inpainting completion needs scikit-image, which is not installed; run "
                    "pip install -r requirements.txt")
  out_dir = files.check_output_dir(cfg.out, cfg.overwrite, program="edit", summary=SUMMARY,
                                   owned=OUTPUTS, inputs=[("--latents", cfg.latents),
                                                          ("--images", cfg.images),
                                                          ("--segmenter", cfg.segmenter)])
  gen = load_generator(cfg.generator)
  alpha_params = load_alpha(cfg.alpha, gen)
  if cfg.direction >= gen.module.style_dim:
    raise UserError(f"--direction={cfg.direction} must be < {gen.module.style_dim} (the "
                    "generator's style_dim: there is one SeFa direction per dimension)")
  model = segmentation.load_model(cfg.segmenter) if cfg.segmenter else None
  photos, truth = None, None
  if seeds is not None:
    names, latents, noise = seed_latents(seeds, gen, cfg.truncation, cfg.seed)
  else:
    names, latents, noise = load_latents(cfg.latents, gen, cfg.seed)
    photos, truth = load_photos(cfg, names)
  eigenvalues, directions = editing.sefa_directions(editing.modulation_matrix(gen.params))
  r = edit_arrays(gen, alpha_params, latents, noise, directions[:, cfg.direction], cfg)
  bad = [k for k in ("image", "edited", "alpha", "alpha_edit") if not np.all(np.isfinite(r[k]))]
  if bad:
    raise UserError(f"--generator={cfg.generator}: the edit is not finite ({', '.join(bad)}); "
                    "lower --strength, nothing was written")
  originals = photos if photos is not None else list(r["image"])
  photo_alphas = [None] * len(originals)
  if model is not None:
    photo_alphas = segmentation.alphas(model, [images.to_uint8(o) for o in originals], "pad")
  items = [compose(r, k, o, cfg, a) for k, (o, a) in enumerate(zip(originals, photo_alphas))]
  scores = None if truth is None else [
      score_truth(it, e, b, cfg.score_margin)
      for it, e, b in zip(items, truth["exact"], truth["background"])]
  summary = _summary(items, names, r, scores, cfg)
  summary.update(original="photo" if photos is not None else "G(w)",
                 eigenvalue=float(eigenvalues[cfg.direction]),
                 generator=os.path.abspath(cfg.generator), generator_fingerprint=gen.fingerprint,
                 config=to_dict(cfg))
  with files.staged(out_dir, program="edit") as st:
    _write(st.path, names, items, gen.size, photos is not None, cfg)
    metrics_log.write_json(os.path.join(st.path, SUMMARY), summary)
    st.commit()
  return summary
