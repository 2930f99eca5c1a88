"""The student as a portable file: `<out>/model.jax` (a `jax.export` artifact) and
`<out>/model.json` (its conventions and provenance); `system.artifact` has the format.

  from l4f_jax.config import resolve
  from l4f_jax.programs.export_segmenter import ExportConfig, export
  meta = export(resolve(ExportConfig, segmenter=DIR, out="workspace/export/shapes"))

`experiments.export_segmenter` is its CLI; `--onnx` adds `<out>/model.onnx` (optional extra,
requirements-onnx.txt). `--out` is checked like every output (not an input, replaced only with
--overwrite and only when it is an earlier export) and written atomically.
"""
from __future__ import annotations

import dataclasses

from l4f_jax.config import option
from l4f_jax.io import image_io
from l4f_jax.system import artifact, segmentation, weights


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  segmenter: str = option("workspace/runs/shapes/segmenter", "Segmenter export "
                          "(python -m experiments.train_student).", nonempty=True)
  out: str = option("", "Output folder: model.jax and model.json (and model.onnx).", nonempty=True)
  overwrite: bool = option(False, "Replace an earlier export at --out.")
  fit: str = option(segmentation.DEFAULT_FIT, "The fit recorded in model.json as the one to "
                    "use for photos of other shapes (experiments.segment --fit).",
                    choices=image_io.FITS)
  onnx: bool = option(False, "Also write model.onnx (jax2onnx, checked against onnxruntime; "
                      "optional: pip install -r requirements-onnx.txt).")


def export(cfg: ExportConfig) -> dict:
  """Writes the artifact; returns its description (model.json)."""
  seg = weights.load_segmenter(cfg.segmenter)
  return artifact.export_segmenter(seg, cfg.out, cfg.overwrite, default_fit=cfg.fit,
                                   onnx=cfg.onnx)
