"""Raw images in, masks out: a trained student segmenter over any folder or list of images.

  from l4f_jax.config import resolve
  from l4f_jax.system.segment import SegmentConfig, segment
  summary = segment(resolve(SegmentConfig, segmenter=DIR, images="photos/", out="masks_out"))

`experiments.segment` is its CLI. Per input (decoded by `image_io.read_rgb`: greyscale, RGBA,
palette, 16-bit, float and CMYK inputs are converted; EXIF orientation applied), the whole image is
resized to the segmenter's size, segmented, and the soft mask resized back to the input's own size:

  <out>/masks/<stem>.png    0 = background, 255 = foreground (alpha >= the export's threshold)
  <out>/alpha/<stem>.png    the soft mask, round(255 alpha)
  <out>/cutout/<stem>.png   RGBA: the input with alpha = the soft mask
  <out>/contact_sheet.png   image / soft mask / cut-out of the first inputs
  <out>/segment.json        counts, the skipped files and why, the settings

Batches run as one jitted program sharded over all local devices. Unreadable files are skipped,
named, and counted. The outputs are written into a temporary directory next to `out`, renamed into
place at the end; an existing non-empty `out` is refused unless `overwrite`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Optional

import jax
import numpy as np

from l4f_jax.config import option
from l4f_jax.method import student as student_lib
from l4f_jax.system import files, image_io, metrics_log, sharding
from l4f_jax.errors import UserError
from l4f_jax.system.train_student import Segmenter, load_segmenter

SUMMARY = "segment.json"


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
  segmenter: str = option("workspace/runs/shapes/segmenter", "Segmenter export "
                          "(python -m experiments.train_student).", nonempty=True)
  images: str = option("", "A folder of images (searched recursively) or comma-separated files.",
                       nonempty=True)
  out: str = option("", "Output directory (masks/, alpha/, cutout/, contact_sheet.png).",
                    nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out.")
  threshold: Optional[float] = option(None, "Hard mask = alpha >= threshold (default: the "
                                      "export's).", ge=0, le=1)
  batch: int = option(16, "Images per device per step.", ge=1)
  sheet_items: int = option(64, "Inputs shown on the contact sheet (0 = none).", ge=0)


def predictor(seg: Segmenter, mesh):
  """fn(images float32 [N, S, S, 3] in [-1, 1], N a multiple of the mesh size) -> alpha
  [N, S, S, 1] as NumPy, sharded over the mesh's devices."""
  params = sharding.replicate(seg.params, mesh)
  fn = jax.jit(functools.partial(student_lib.predict_alpha, model=seg.module))
  shd = jax.sharding.NamedSharding(mesh, sharding.SHARDED)
  return lambda x: np.asarray(jax.device_get(fn(params, jax.device_put(x, shd))))


def predict_arrays(seg: Segmenter, images: np.ndarray, batch: int = 16, mesh=None) -> np.ndarray:
  """Soft masks of model-size images [N, S, S, 3] in [-1, 1] -> [N, S, S, 1] (padded batches)."""
  mesh = mesh or sharding.make_mesh(len(jax.local_devices()))
  step = batch * mesh.devices.size
  run = predictor(seg, mesh)
  out = []
  for s in range(0, len(images), step):
    x = images[s:s + step]
    pad = step - len(x)
    out.append(run(np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]))[:len(x)])
  return np.concatenate(out)


def segment(cfg: SegmentConfig) -> dict:
  """Segments every input (module docstring); returns the summary written to segment.json."""
  out = files.check_output_dir(cfg.out, cfg.overwrite)
  paths = image_io.list_inputs(cfg.images)
  if not paths:
    raise UserError(f"--images={cfg.images}: no images found")
  seg = load_segmenter(cfg.segmenter)
  threshold = seg.threshold if cfg.threshold is None else cfg.threshold
  root = cfg.images if os.path.isdir(cfg.images) else None
  stems = image_io.output_stems(paths, root)
  mesh = sharding.make_mesh(len(jax.local_devices()))
  step = cfg.batch * mesh.devices.size
  run = predictor(seg, mesh)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = files.staging_dir(out)
  skipped, sheet, done = [], [], 0
  progress = metrics_log.Progress(0, len(paths))
  try:
    for s in range(0, len(paths), step):
      chunk, rgbs = [], []
      for path, stem in zip(paths[s:s + step], stems[s:s + step]):
        try:
          rgb = image_io.read_rgb(path)
        except image_io.UnreadableImage as e:
          skipped.append({"file": path, "reason": str(e)})
          metrics_log.log_console(f"skipped {e}")
          continue
        chunk.append(stem)
        rgbs.append(rgb)
      if not rgbs:
        continue
      x = np.stack([image_io.to_model_input(r, seg.size) for r in rgbs])
      x = np.concatenate([x, np.zeros((step - len(x),) + x.shape[1:], x.dtype)])
      alpha = run(x)[:len(rgbs), ..., 0]
      for stem, rgb, a in zip(chunk, rgbs, alpha):
        a_hw = image_io.alpha_to_original(a, rgb.shape[:2])
        image_io.write_segmentation(tmp, stem, rgb, a_hw, threshold)
        if len(sheet) < cfg.sheet_items:
          sheet.append((rgb, a_hw))
      done += len(rgbs)
      metrics_log.log_console(f"segment: {progress.line(min(s + step, len(paths)))}")
    if done == 0:
      raise UserError(f"--images={cfg.images}: none of the {len(paths)} image(s) could be read "
                      f"(e.g. {skipped[0]['reason']}); nothing was written")
    if sheet:
      image_io.save_contact_sheet(os.path.join(tmp, "contact_sheet.png"), sheet)
    summary = {"segmented": done, "skipped": len(skipped), "skipped_files": skipped,
               "threshold": threshold, "segmenter": os.path.abspath(cfg.segmenter),
               "size": seg.size, "images": cfg.images}
    metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
    files.replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return summary
