r"""Export a trained student as one portable file that runs without this package.

  python -m experiments.export_segmenter --segmenter=workspace/runs/shapes/segmenter \
      --out=workspace/export/shapes

Writes <out>/model.jax (jax.export, uint8 RGB [B, S, S, 3] -> float32 alpha [B, S, S], any batch
size, cpu + cuda + tpu) and <out>/model.json (size, threshold, conventions, provenance, jax
version). --onnx also writes <out>/model.onnx (optional: pip install -r requirements-onnx.txt).
docs/segmentation.md shows how to run either. The flags are the fields of
`l4f_jax.programs.export_segmenter.ExportConfig`.
"""
from __future__ import annotations

from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.export_segmenter import ExportConfig, export

define_flags(ExportConfig)


@cli.main("export_segmenter")
def main(argv):
  del argv
  cfg = from_flags(ExportConfig)
  meta = export(cfg)
  print(f"wrote a {meta['size']} px artifact (jax {meta['jax_version']}, "
        f"{', '.join(meta['platforms'])}) to {cfg.out}"
        + (f", and model.onnx (opset {meta['onnx']['opset']})" if meta["onnx"] else ""))


if __name__ == "__main__":
  cli.run(main)
