r"""Segment any images with a trained student: raw images in, masks out.

  python -m experiments.segment --segmenter=workspace/runs/shapes/segmenter \
      --images=my_photos/ --out=workspace/segment/my_photos

--images: a folder, one file or comma-separated files. --fit=pad|crop|stretch: how a photo of any
shape meets the model's square; --outputs=mask,alpha,cutout: what is written per input
(<out>/masks/, <out>/alpha/, <out>/cutout/, at each input's exact size); --bgcolor=R,G,B: the
cut-out over a colour. Always <out>/contact_sheet.png and <out>/segment.json (every input mapped
to its outputs). --segmenter takes a segmenter directory or an exported artifact. Under
jax.distributed (--coordinator_address/--num_processes/--process_id, or a detected cluster) each
process segments every num_processes-th input into one shared staging folder, and process 0
renames it to --out once all are done. The flags are the fields of
`l4f_jax.programs.segment.SegmentConfig`.
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.segment import SegmentConfig, segment

define_flags(SegmentConfig)
cli.define_distributed_flags()


@cli.main("segment")
def main(argv):
  del argv
  cfg = from_flags(SegmentConfig)
  cli.init_distributed()
  summary = segment(cfg)
  if summary is None:  # a process other than 0 of a multi-process run
    return
  skipped = summary["skipped_files"]
  print(f"segmented {summary['segmented']} image(s), skipped {len(skipped)}"
        + (": " + ", ".join(s["file"] for s in skipped) if skipped else ""))


if __name__ == "__main__":
  cli.run(main)
