"""Raw images in, masks out: a trained student segmenter over any folder or list of images.

  from l4f_jax.config import resolve
  from l4f_jax.programs.segment import SegmentConfig, segment
  summary = segment(resolve(SegmentConfig, segmenter=DIR, images="photos/", out="masks_out"))

`experiments.segment` is its CLI. Per input (decoded by `image_io.read_rgb`: greyscale, RGBA,
palette, 16-bit, float and CMYK inputs are converted; EXIF orientation applied), the whole image is
resized to the segmenter's size, segmented, and the soft mask resized back to the input's own size:

  <out>/masks/<stem>.png    0 = background, 255 = foreground (alpha > the export's threshold)
  <out>/alpha/<stem>.png    the soft mask, round(255 alpha)
  <out>/cutout/<stem>.png   RGBA: the input with alpha = the soft mask
  <out>/contact_sheet.png   image / soft mask / cut-out of the first inputs
  <out>/segment.json        counts, the skipped files and why, the settings

Predictions come from `system.segmentation` (batches sharded over all local devices, memory
bounded by a pixel budget); the contact sheet keeps thumbnails, so memory does not grow with the
photos' size or number either. Unreadable files, and images over --max_pixels, are skipped, named,
and counted. A non-finite prediction stops the run with one line.

The outputs are written into a staging folder next to `out` and renamed into place at the end
(`files.staged`). `--out` may not be, hold or lie inside an input; an existing `out` is replaced
only with `overwrite` and only when it is an earlier segment output. A run that was killed or
interrupted leaves its staging folder with a journal of the inputs done: the same command (same
inputs, segmenter and settings) resumes from it; another command removes it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from l4f_jax.config import option
from l4f_jax.io import files, image_io
from l4f_jax.system import metrics_log, segmentation, weights
from l4f_jax.errors import UserError

SUMMARY = "segment.json"
OUTPUTS = ("masks", "alpha", "cutout", "contact_sheet.png", SUMMARY)


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
  segmenter: str = option("workspace/runs/shapes/segmenter", "Segmenter export "
                          "(python -m experiments.train_student).", nonempty=True)
  images: str = option("", "A folder of images (searched recursively) or comma-separated files.",
                       nonempty=True)
  out: str = option("", "Output directory (masks/, alpha/, cutout/, contact_sheet.png).",
                    nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out.")
  threshold: Optional[float] = option(None, "Hard mask = alpha > threshold (default: the "
                                      "export's).", ge=0, le=1)
  batch: int = option(16, "Images per device per step.", ge=1)
  sheet_items: int = option(64, "Inputs shown on the contact sheet (0 = none).", ge=0)
  max_pixels: int = option(image_io.MAX_PIXELS, "Larger images are skipped (named in "
                           "segment.json) before they are decoded.", ge=1)


def _resumed_cells(tmp: str, path: str, stem: str, max_pixels: int):
  """Contact-sheet cells of an input a killed run already segmented (from its staged alpha)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(os.path.join(tmp, "alpha", f"{stem}.png")) as a:
    alpha = np.asarray(a, np.float32) / 255.0
  return image_io.contact_sheet_cells(image_io.read_rgb(path, max_pixels), alpha)


def segment(cfg: SegmentConfig) -> dict:
  """Segments every input (module docstring); returns the summary written to segment.json."""
  out = files.check_output_dir(cfg.out, cfg.overwrite, program="segment", summary=SUMMARY,
                               owned=OUTPUTS, inputs=image_io.input_roots(cfg.images))
  paths = image_io.list_inputs(cfg.images)
  if not paths:
    raise UserError(f"--images={cfg.images}: no images found")
  seg = weights.load_segmenter(cfg.segmenter)
  threshold = seg.threshold if cfg.threshold is None else cfg.threshold
  root = cfg.images if os.path.isdir(cfg.images) else None
  stems = image_io.output_stems(paths, root)
  settings = {"segmenter": weights.fingerprint(seg.params), "threshold": threshold,
              "max_pixels": cfg.max_pixels, "inputs": image_io.input_signature(paths, stems)}
  skipped, cells, done = [], {}, 0
  progress = metrics_log.Progress(0, len(paths))
  with files.staged(out, program="segment", settings=settings, resumable=True) as st:
    tmp = st.path
    finished = {e["file"]: e for e in st.journal}
    for k, path in enumerate(paths):
      e = finished.get(os.path.abspath(path))
      if e is None:
        continue
      if "skipped" in e:
        skipped.append({"file": path, "reason": e["skipped"]})
      else:
        done += 1
        if k < cfg.sheet_items:
          cells[k] = _resumed_cells(tmp, path, stems[k], cfg.max_pixels)
    todo = [(k, p, s) for k, (p, s) in enumerate(zip(paths, stems))
            if os.path.abspath(p) not in finished]
    for chunk in segmentation.predictions(seg, todo, cfg.batch, cfg.max_pixels, skipped):
      for k, path, stem, rgb, a_hw in chunk:
        image_io.write_segmentation(tmp, stem, rgb, a_hw, threshold)
        if k < cfg.sheet_items:
          cells[k] = image_io.contact_sheet_cells(rgb, a_hw)
      entries = [{"file": os.path.abspath(c[1])} for c in chunk] + [
          {"file": os.path.abspath(x["file"]), "skipped": x["reason"]} for x in skipped
          if os.path.abspath(x["file"]) not in finished]
      st.record(entries)
      finished.update({e["file"]: e for e in entries})
      done += len(chunk)
      metrics_log.log_console(f"segment: {progress.line(done + len(skipped))}")
    if done == 0:
      raise UserError(f"--images={cfg.images}: none of the {len(paths)} image(s) could be read "
                      f"(e.g. {os.path.basename(skipped[0]['file'])}: --verbose says why); "
                      "nothing was written", detail="\n".join(x["reason"] for x in skipped))
    if cells:
      image_io.save_contact_sheet(os.path.join(tmp, "contact_sheet.png"),
                                  [cells[k] for k in sorted(cells)])
    skipped.sort(key=lambda x: paths.index(x["file"]) if x["file"] in paths else len(paths))
    summary = {"segmented": done, "skipped": len(skipped), "skipped_files": skipped,
               "threshold": threshold, "segmenter": os.path.abspath(cfg.segmenter),
               "size": seg.size, "images": cfg.images}
    metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
    st.commit()
  return summary
