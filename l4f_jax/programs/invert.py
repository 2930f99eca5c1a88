"""Real images through G: masks by GAN inversion (`experiments.invert`).

  from l4f_jax.config import resolve
  from l4f_jax.programs.invert import InvertConfig, invert
  summary = invert(resolve(InvertConfig, generator=G_DIR, alpha=A_DIR, images="photos/", out="inv"))

Each input (decoded by `image_io.read_rgb`, resized to G's size by `image_io.to_model_input`) is
projected into G by `method.inversion` (latent w or w+ and the noise maps; rosinality's projector
with a loss that needs no downloaded weights), then A reads the features of G at the found latent:

  <out>/masks/<stem>.png    0 / 255 at the input's own size: 255 where A's alpha > threshold (0.9)
  <out>/alpha/<stem>.png    A's soft mask, round(255 alpha), at the input's own size
  <out>/latents/<stem>.npy  the latent, float32 [style_dim] (w) or [n_latent, style_dim] (w+)
  <out>/noise/<stem>.npz    its noise maps n0, n1, ... [r, r, 1] (G(latent, noise) = the recon)
  <out>/recon/<stem>.png    G(latent, noise) at G's size
  <out>/grid.png            input / recon / alpha / mask of the first inputs
  <out>/metrics.json        PSNR of every recon (dB, against the model-size input) and their mean,
                            seconds per image and images per second of the inversion (compile
                            excluded, reported apart), skipped files, the settings, and
                            "sources": {stem: {"file": absolute path, "size": [h, w]}}, where each
                            photo came from (`experiments.edit` edits that photo, not the recon)

Batches of `batch` images per device run as one jitted program whose inputs are sharded over a
Mesh of all local devices (every image's optimisation is independent: its random draws come from
fold_in(stream 'invert' of --seed, its index), so its result does not depend on the batch or the
device count). Unreadable files, and images over --max_pixels, are skipped and named.

Outputs go to a staging folder next to `out`, renamed into place at the end (`files.staged`);
`--out` may not be, hold or lie inside an input, and an existing `out` is replaced only with
`overwrite` and only when it is an earlier invert output. A killed or interrupted run leaves its
staging folder with a journal of the images done: the same command resumes from it (each image's
result depends only on its index, so a resumed run writes what an uninterrupted one would).

Under jax.distributed (`experiments.invert` takes segment's --coordinator_address /
--num_processes / --process_id) the run is shared as `programs.segment` shares it
(`sharding.shared_staged`): process k inverts inputs k, k + N, ... on its own devices into the
one staging folder, recording each image (PSNR, source, seconds) in a journal of its own and
staging its grid row; metrics.json and grid.png are built by process 0 from the journals and rows
of all processes, in input order, so they hold what one process writes (except the timings and
"processes"), and process 0 renames the folder to `out` once every share is done. A killed run
resumes with any number of processes (the journals say what is done, whoever did it).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.config import nested, option, to_dict
from l4f_jax.method import inversion, masks
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import N_MEAN_LATENT
from l4f_jax.io import files, image_io, images
from l4f_jax.system import metrics_log, sharding, training
from l4f_jax.errors import UserError
from l4f_jax.system.weights import LoadedGenerator, fingerprint, load_alpha, load_generator

SUMMARY = "metrics.json"
OUTPUTS = ("masks", "alpha", "recon", "latents", "noise", "grid.png", SUMMARY)
LOSSES = ("pixel", "d_features", "mse")
GRID_DIR = ".grid"  # staged grid rows (one .npz per input shown), removed on commit
GRID_COLUMNS = ("image", "recon", "alpha", "mask")


@dataclasses.dataclass(frozen=True)
class InvertConfig:
  generator: str = option("experiments/assets/shapes64", "Generator weight directory.",
                          nonempty=True)
  alpha: str = option("workspace/runs/shapes/alpha", "Alpha export trained on --generator "
                      "(a training run's alpha/).", nonempty=True)
  images: str = option("", "A folder of images (searched recursively) or comma-separated files.",
                       nonempty=True)
  out: str = option("", "Output directory (masks/, latents/, noise/, recon/, metrics.json).",
                    nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out.")
  loss: str = option("pixel", "Image loss: pixel = squared error of pixels and image gradients on "
                     "a pyramid; d_features = LPIPS-like distance of the generator directory's "
                     "discriminator features + pixel; mse = plain pixel MSE.", choices=LOSSES)
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold (official rule).",
                            ge=0, lt=1)
  batch: int = option(16, "Images per device per program.", ge=1)
  seed: int = option(0, "Seed of w-bar / sigma_w and of the per-image noise and jitter draws.")
  sheet_items: int = option(16, "Inputs shown in grid.png (0 = none).", ge=0)
  max_pixels: int = option(image_io.MAX_PIXELS, "Larger images are skipped (named in "
                           "metrics.json) before they are decoded.", ge=1)
  projector: inversion.ProjectorConfig = nested(inversion.ProjectorConfig)


def image_loss(name: str, gen: LoadedGenerator) -> inversion.ImageLoss:
  """The `--loss` callable (x, target) -> scalar."""
  if name == "pixel":
    return inversion.pixel_gradient_loss
  if name == "mse":
    return lambda x, t: jnp.mean(jnp.square(x - t))
  if "d" not in gen.trees:
    raise UserError(f"--loss=d_features needs a discriminator ('d') in --generator={gen.path}, "
                    f"which holds {sorted(gen.trees)}; pass --loss=pixel")
  return inversion.d_feature_loss(gen.discriminator(stddev_group=1), gen.trees["d"])


def inverter(gen: LoadedGenerator, alpha_params, cfg: InvertConfig, mesh):
  """fn(images [N, S, S, 3] in [-1, 1], indices [N] int32), N a multiple of the mesh size ->
  dict of NumPy arrays: recon, alpha [N, S, S, 1], latent, noise (list), loss, psnr [N]. Inputs are
  sharded over the mesh; the compiled program is built on the first call (`fn.compile(shape)`
  builds it ahead)."""
  G, A = gen.module, AlphaNetwork(gen.size)
  loss_fn = image_loss(cfg.loss, gen)
  pcfg = cfg.projector
  w_avg = training.generator_w_avg(gen, cfg.seed)
  _, sigma = jax.jit(lambda p, k: inversion.latent_std(G, p, k, N_MEAN_LATENT))(
      gen.params, training.stream_key(cfg.seed, "w_avg"))
  base = training.stream_key(cfg.seed, "invert")

  def run(g_params, a_params, w_avg, sigma, target, index):
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    state = inversion.init_state(keys, w_avg, generator=G, cfg=pcfg)
    state, terms = inversion.project(state, target, keys, g_params, sigma, generator=G, cfg=pcfg,
                                     loss_fn=loss_fn)
    recon, feats = inversion.synthesize(state.latent, state.noise, g_params, generator=G)
    alpha = A.apply({"params": a_params}, select_features(feats, G.size))
    return dict(recon=recon, alpha=alpha, latent=state.latent, noise=state.noise,
                loss=terms["loss"], psnr=inversion.psnr(recon, target))

  rep = lambda t: sharding.replicate(t, mesh)
  consts = (rep(gen.params), rep(alpha_params), rep(w_avg), rep(sigma))
  shd = jax.sharding.NamedSharding(mesh, sharding.SHARDED)
  fn = jax.jit(run)
  compiled = {}

  def compile_for(n: int):
    if n not in compiled:
      x = jax.ShapeDtypeStruct((n, G.size, G.size, 3), jnp.float32, sharding=shd)
      i = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=shd)
      compiled[n] = fn.lower(*consts, x, i).compile()
    return compiled[n]

  def call(x, index):
    prog = compile_for(len(x))
    out = prog(*consts, jax.device_put(x, shd), jax.device_put(np.asarray(index, np.int32), shd))
    return jax.tree.map(np.asarray, jax.device_get(out))

  call.compile = compile_for
  return call


def _write_one(tmp: str, stem: str, rgb, out: dict, k: int, threshold: float) -> None:
  a_hw = image_io.alpha_to_original(out["alpha"][k], rgb.shape[:2])
  images.save_png(os.path.join(tmp, "masks", f"{stem}.png"),
                  np.where(masks.hard_mask(a_hw, threshold), 255, 0).astype(np.uint8))
  images.save_png(os.path.join(tmp, "alpha", f"{stem}.png"), a_hw)
  images.save_png(os.path.join(tmp, "recon", f"{stem}.png"), out["recon"][k])
  np.save(os.path.join(tmp, "latents", f"{stem}.npy"), out["latent"][k].astype(np.float32))
  np.savez(os.path.join(tmp, "noise", f"{stem}.npz"),
           **{f"n{j}": n[k].astype(np.float32) for j, n in enumerate(out["noise"])})


def _grid_row(tmp: str, k: int, x, out: dict, j: int, threshold: float) -> None:
  """Stages input k's grid row (input, recon, alpha, mask at G's size) for `_write_grid`."""
  os.makedirs(os.path.join(tmp, GRID_DIR), exist_ok=True)
  a = out["alpha"][j]
  np.savez(os.path.join(tmp, GRID_DIR, f"{k}.npz"), image=x, recon=out["recon"][j], alpha=a,
           mask=masks.hard_mask(a, threshold))


def _write_grid(tmp: str, n: int) -> None:
  """grid.png from the staged rows of inputs 0..n-1 (whichever process inverted them, in this
  run or a killed one); the rows are removed."""
  rows = []
  for k in range(n):
    path = os.path.join(tmp, GRID_DIR, f"{k}.npz")
    if os.path.exists(path):
      with np.load(path) as r:
        rows.append({key: r[key] for key in GRID_COLUMNS})
  if rows:
    images.save_grid(os.path.join(tmp, "grid.png"),
                     {key: np.stack([r[key] for r in rows]) for key in GRID_COLUMNS})
  shutil.rmtree(os.path.join(tmp, GRID_DIR), ignore_errors=True)


def _skips(skipped: list) -> list[dict]:
  return [{"file": os.path.abspath(x["file"]), "skipped": x["reason"]} for x in skipped]


def _invert_share(st, run, cfg: InvertConfig, size: int, todo: list, step: int, n: int) -> float:
  """Inverts `todo` (this process's share of the inputs that the journal does not list yet,
  `sharding.process_share`) in programs of `step` images (padded with indices >= n, the number of
  inputs); writes each image's outputs and grid row, then records it in the journal (PSNR, source,
  its share of its program's seconds). Returns the compile seconds (0 with nothing to do)."""
  if not todo:
    return 0.0
  t0 = time.perf_counter()
  run.compile(step)
  compile_s = time.perf_counter() - t0
  skipped, recorded, done = [], 0, 0
  progress = metrics_log.Progress(0, len(todo))
  for chunk in image_io.read_batches(todo, step, cfg.max_pixels, skipped):
    x = np.stack([image_io.to_model_input(c[3], size) for c in chunk])
    x = np.concatenate([x, np.zeros((step - len(x),) + x.shape[1:], x.dtype)])
    index = [c[0] for c in chunk] + list(range(n, n + step - len(chunk)))
    t1 = time.perf_counter()
    res = run(x, np.asarray(index))
    seconds = time.perf_counter() - t1
    if not all(np.all(np.isfinite(res[key][:len(chunk)])) for key in ("recon", "alpha")):
      raise UserError(f"--generator={cfg.generator}: the inversion of {chunk[0][1]} is not "
                      "finite; lower --lr, nothing was written")
    entries = []
    for j, (k, path, stem, rgb) in enumerate(chunk):
      _write_one(st.path, stem, rgb, res, j, cfg.threshold)
      if k < cfg.sheet_items:
        _grid_row(st.path, k, x[j], res, j, cfg.threshold)
      entries.append({"psnr": round(float(res["psnr"][j]), 3), "file": os.path.abspath(path),
                      "size": [int(v) for v in rgb.shape[:2]], "seconds": seconds / len(chunk)})
    st.record(entries + _skips(skipped[recorded:]))
    recorded, done = len(skipped), done + len(chunk)
    metrics_log.log_console(f"invert: {progress.line(done + recorded)}")
  if skipped[recorded:]:
    st.record(_skips(skipped[recorded:]))
  return compile_s


def _summary(cfg: InvertConfig, gen: LoadedGenerator, paths, stems, entries, resumed,
             compile_s: float) -> dict:
  """metrics.json from every input's journal entry (`sharding.gather_journal`, input order);
  `resumed`: the files a killed run had inverted. Refuses a run where no image could be read."""
  skipped = [{"file": p, "reason": e["skipped"]} for p, e in zip(paths, entries)
             if e is not None and "skipped" in e]
  done = [(s, e) for s, e in zip(stems, entries) if e is not None and "skipped" not in e]
  if not done:
    raise UserError(f"--images={cfg.images}: none of the {len(paths)} image(s) could be read "
                    f"(e.g. {os.path.basename(skipped[0]['file'])}: --verbose says why); "
                    "nothing was written", detail="\n".join(x["reason"] for x in skipped))
  psnrs = {s: e["psnr"] for s, e in done}
  new = [e for _, e in done if e["file"] not in resumed]
  seconds = sum(e.get("seconds", 0.0) for e in new)
  return {"inverted": len(done), "skipped": len(skipped), "skipped_files": skipped,
          "psnr": psnrs, "psnr_mean": round(float(np.mean(list(psnrs.values()))), 3),
          "seconds_per_image": seconds / max(len(new), 1),
          # the processes invert their shares at the same time
          "images_per_second": len(new) * jax.process_count() / max(seconds, 1e-9),
          "resumed": len(done) - len(new), "compile_seconds": compile_s,
          "devices": jax.device_count(), "processes": jax.process_count(),
          "generator": os.path.abspath(cfg.generator), "generator_fingerprint": gen.fingerprint,
          "alpha": os.path.abspath(cfg.alpha), "size": gen.size, "images": cfg.images,
          "sources": {s: {"file": e["file"], "size": e.get("size")} for s, e in done},
          "config": to_dict(cfg)}


def invert(cfg: InvertConfig) -> Optional[dict]:
  """Inverts every input (module docstring); returns the summary written to metrics.json (None on
  the processes other than 0 of a multi-process run, which write their share of the outputs into
  the same staging folder)."""
  out = files.check_output_dir(cfg.out, cfg.overwrite, program="invert", summary=SUMMARY,
                               owned=OUTPUTS, inputs=image_io.input_roots(cfg.images))
  paths = image_io.list_inputs(cfg.images)
  if not paths:
    raise UserError(f"--images={cfg.images}: no images found")
  gen = load_generator(cfg.generator)
  alpha_params = load_alpha(cfg.alpha, gen)
  root = cfg.images if os.path.isdir(cfg.images) else None
  stems = image_io.output_stems(paths, root)
  mesh = sharding.local_mesh()   # each process of a multi-process run inverts its own share
  step = cfg.batch * mesh.devices.size
  run = inverter(gen, alpha_params, cfg, mesh)
  settings = {"generator": gen.fingerprint, "alpha": fingerprint(alpha_params),
              "config": {k: v for k, v in to_dict(cfg).items()
                         if k not in ("out", "overwrite", "sheet_items", "batch")},
              "inputs": image_io.input_signature(paths, stems),
              "grid_rows": GRID_DIR}  # staged grid rows: an older staging folder is not resumed
  with sharding.shared_staged(out, program="invert", settings=settings, resumable=True) as st:
    for d in ("masks", "alpha", "recon", "latents", "noise"):
      os.makedirs(os.path.join(st.path, d), exist_ok=True)
    resumed = {e["file"] for e in st.journal if "skipped" not in e}
    compile_s = _invert_share(st, run, cfg, gen.size,
                              sharding.process_share(paths, stems, st.journal), step, len(paths))
    summary = _summary(cfg, gen, paths, stems, sharding.gather_journal(st, paths), resumed,
                       compile_s)

    def finish(tmp):
      _write_grid(tmp, min(cfg.sheet_items, len(paths)))
      metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
    sharding.commit_shared(st, finish)
  return summary if jax.process_index() == 0 else None
