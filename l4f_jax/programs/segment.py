"""Raw images in, masks out: a trained student segmenter over any folder or list of images.

  from l4f_jax.config import resolve
  from l4f_jax.programs.segment import SegmentConfig, segment
  summary = segment(resolve(SegmentConfig, segmenter=DIR, images="photos/", out="masks_out"))

`experiments.segment` is its CLI. Per input (decoded by `image_io.read_rgb`: greyscale, RGBA,
palette, 16-bit, float and CMYK inputs are converted; EXIF orientation applied), the picture meets
the segmenter's square by `--fit` (`image_io.fit_tiles`: pad, crop or stretch), is segmented, and
the soft mask comes back at the input's exact pixel size. `--outputs` chooses among:

  <out>/masks/<stem>.png    0 = background, 255 = foreground (alpha > the export's threshold)
  <out>/alpha/<stem>.png    the soft mask (matte), round(255 alpha)
  <out>/cutout/<stem>.png   RGBA: the input with alpha = the soft mask (RGB over --bgcolor)
and always writes
  <out>/contact_sheet.png   file name / image / mask / matte / cut-out of the first inputs
  <out>/segment.json        counts, the settings, and 'files': every input as given with its
                            outputs (paths relative to out) or the reason it was skipped

Output names follow `image_io.output_stems` (the rule is in its module docstring).
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
import shutil
from typing import Optional

import jax
import numpy as np

from l4f_jax.config import option
from l4f_jax.io import files, image_io
from l4f_jax.system import metrics_log, segmentation, sharding
from l4f_jax.errors import UserError

SUMMARY = "segment.json"
OUTPUTS = ("masks", "alpha", "cutout", "contact_sheet.png", SUMMARY)


SHEET_DIR = ".sheet"  # staged contact-sheet rows (one PNG per input shown), removed on commit


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
  segmenter: str = segmentation.segmenter_option()
  images: str = option("", "A folder of images (searched recursively), one image file, or "
                       "comma-separated files.", nonempty=True)
  out: str = option("", "Output directory (masks/, alpha/, cutout/, contact_sheet.png, "
                    "segment.json).", nonempty=True)
  overwrite: bool = option(False, "Replace an existing non-empty --out.")
  fit: str = option(segmentation.DEFAULT_FIT, "How a photo meets the model's square: pad (to a "
                    "square by edge replication, mask cropped back), crop (overlapping squares, "
                    "masks stitched) or stretch (resize, aspect not kept).", choices=image_io.FITS)
  outputs: str = option(",".join(image_io.OUTPUT_KINDS), "What to write per input, comma-separated: "
                        "mask (0/255), alpha (soft matte), cutout (RGBA, or RGB over --bgcolor).",
                        nonempty=True)
  bgcolor: str = option("", "R,G,B (each 0..255): the cut-out is composited over this colour "
                        "(RGB) instead of carrying alpha (RGBA).")
  threshold: Optional[float] = segmentation.threshold_option()
  batch: int = option(16, "Images per device per step.", ge=1)
  sheet_items: int = option(64, "Inputs shown on the contact sheet (0 = none).", ge=0)
  max_pixels: int = option(image_io.MAX_PIXELS, "Larger images are skipped (named in "
                           "segment.json) before they are decoded.", ge=1)


def parse_outputs(value: str) -> tuple[str, ...]:
  """'mask,alpha' -> ('mask', 'alpha'); one-line refusal of unknown or repeated names."""
  kinds = tuple(k.strip() for k in value.split(",") if k.strip())
  bad = [k for k in kinds if k not in image_io.OUTPUT_KINDS]
  if not kinds or bad or len(set(kinds)) != len(kinds):
    raise UserError(f"--outputs={value}: pass comma-separated names from "
                    f"{','.join(image_io.OUTPUT_KINDS)}, each once")
  return kinds


def parse_bgcolor(value: str) -> Optional[tuple[int, int, int]]:
  """'255,255,255' -> (255, 255, 255); '' -> None; one-line refusal of anything else."""
  if not value.strip():
    return None
  parts = value.split(",")
  try:
    rgb = tuple(int(p.strip()) for p in parts)
  except ValueError:
    rgb = ()
  if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
    raise UserError(f"--bgcolor={value}: pass three integers R,G,B in 0..255, e.g. "
                    "--bgcolor=255,255,255")
  return rgb


def _label(path: str, root: Optional[str]) -> str:
  return os.path.relpath(path, root) if root else os.path.basename(path)


def _sheet_row(tmp: str, k: int, rgb, alpha, threshold: float) -> None:
  """Stores input k's contact-sheet cells (image, mask, matte, cut-out) in the staging folder."""
  cells = image_io.contact_sheet_cells(rgb, alpha, threshold)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(tmp, SHEET_DIR), exist_ok=True)
  files.atomic_write(os.path.join(tmp, SHEET_DIR, f"{k}.png"),
                     lambda t: Image.fromarray(np.concatenate(cells, axis=1)).save(t, "PNG"))


def _write_sheet(tmp: str, labels: dict) -> None:
  """contact_sheet.png from the stored rows of the inputs shown; the rows are removed."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rows, names = [], []
  for k in sorted(labels):
    path = os.path.join(tmp, SHEET_DIR, f"{k}.png")
    if os.path.exists(path):
      with Image.open(path) as im:
        strip = np.asarray(im.convert("RGB"))
      rows.append(tuple(np.split(strip, len(image_io.SHEET_COLUMNS), axis=1)))
      names.append(labels[k])
  if rows:
    image_io.save_contact_sheet(os.path.join(tmp, "contact_sheet.png"), rows, names,
                                cell=rows[0][0].shape[0])
  shutil.rmtree(os.path.join(tmp, SHEET_DIR), ignore_errors=True)


def _file_map(paths, stems, kinds, skipped) -> list[dict]:
  """segment.json's 'files': every input as given, with its outputs (relative to --out) or why
  it was skipped."""
  why = {os.path.abspath(x["file"]): x["reason"] for x in skipped}
  out = []
  for path, stem in zip(paths, stems):
    reason = why.get(os.path.abspath(path))
    out.append({"input": path, "skipped": reason} if reason is not None else
               {"input": path, **{k: f"{image_io.OUTPUT_DIRS[k]}/{stem}.png" for k in kinds}})
  return out


def _run_share(st, model, cfg, todo, kinds, bgcolor, threshold, labels) -> None:
  """Segments `todo` (this process's share of the inputs that the journal does not list yet,
  `sharding.process_share`), recording each batch's inputs and skipped files as done."""
  skipped, recorded = [], 0
  progress = metrics_log.Progress(0, len(todo))
  done = 0
  for chunk in segmentation.predictions(model, todo, cfg.max_pixels, skipped, cfg.fit):
    for k, path, stem, rgb, a_hw in chunk:
      image_io.write_segmentation(st.path, stem, rgb, a_hw, threshold, kinds, bgcolor)
      if k in labels:
        _sheet_row(st.path, k, rgb, a_hw, threshold)
    st.record([{"file": os.path.abspath(c[1])} for c in chunk] + [
        {"file": os.path.abspath(x["file"]), "skipped": x["reason"]} for x in skipped[recorded:]])
    recorded, done = len(skipped), done + len(chunk)
    metrics_log.log_console(f"segment: {progress.line(done + len(skipped))}")
  if skipped[recorded:]:
    st.record([{"file": os.path.abspath(x["file"]), "skipped": x["reason"]}
               for x in skipped[recorded:]])


def segment(cfg: SegmentConfig) -> Optional[dict]:
  """Segments every input (module docstring); returns the summary written to segment.json (None
  on the processes other than 0 of a multi-process run, which write their share of the outputs
  into the same staging folder)."""
  kinds, bgcolor = parse_outputs(cfg.outputs), parse_bgcolor(cfg.bgcolor)
  out = files.check_output_dir(cfg.out, cfg.overwrite, program="segment", summary=SUMMARY,
                               owned=OUTPUTS, inputs=image_io.input_roots(cfg.images))
  paths = image_io.list_inputs(cfg.images)
  if not paths:
    raise UserError(f"--images={cfg.images}: no images found")
  model = segmentation.load_model(cfg.segmenter, cfg.batch)
  threshold = model.threshold if cfg.threshold is None else cfg.threshold
  root = cfg.images if os.path.isdir(cfg.images) else None
  stems = image_io.output_stems(paths, root)
  settings = {"segmenter": model.fingerprint, "threshold": threshold, "fit": cfg.fit,
              "outputs": list(kinds), "bgcolor": bgcolor and list(bgcolor),
              "max_pixels": cfg.max_pixels, "processes": jax.process_count(),
              "inputs": image_io.input_signature(paths, stems)}
  labels = {k: _label(p, root) for k, p in enumerate(paths[:cfg.sheet_items])}
  with sharding.shared_staged(out, program="segment", settings=settings, resumable=True) as st:
    _run_share(st, model, cfg, sharding.process_share(paths, stems, st.journal), kinds, bgcolor,
               threshold, labels)
    entries = sharding.gather_journal(st, paths)
    skipped = [{"file": p, "reason": e["skipped"]} for p, e in zip(paths, entries)
               if e is not None and "skipped" in e]
    done = sum(e is not None and "skipped" not in e for e in entries)
    if done == 0:
      raise UserError(f"--images={cfg.images}: none of the {len(paths)} image(s) could be read "
                      f"(e.g. {os.path.basename(skipped[0]['file'])}: --verbose says why); "
                      "nothing was written", detail="\n".join(x["reason"] for x in skipped))
    summary = {"segmented": done, "skipped": len(skipped), "skipped_files": skipped,
               "files": _file_map(paths, stems, kinds, skipped), "threshold": threshold,
               "fit": cfg.fit, "outputs": list(kinds), "bgcolor": bgcolor,
               "segmenter": os.path.abspath(cfg.segmenter), "size": model.size,
               "images": cfg.images, "processes": jax.process_count()}

    def finish(tmp):
      _write_sheet(tmp, labels)
      metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
    sharding.commit_shared(st, finish)
  return summary if jax.process_index() == 0 else None
