"""Prepare a training dataset (tfds array_record) from an image folder or the procedural shapes.

  python -m experiments.prepare_data --src=<folder> --name=ffhq --size=256
  python -m experiments.prepare_data --src=shapes --size=64 [--num_examples=4096 --seed=0]
  python -m experiments.prepare_data --src=shapes_windows --num_examples=512   # images/, masks/
  python -m experiments.prepare_data --src=shapes_val --num_examples=512   # images/, masks/, backgrounds/
  python -m experiments.prepare_data --synthetic --size=64

Folder images are resized (shorter side, LANCZOS) and centre-cropped as rosinality's
prepare_data.py does, stored losslessly (PNG), decoded as experiments.segment decodes (16-bit and
float greyscale scaled by their depth, transparency over white, EXIF orientation applied). Prints
the dataset directory to pass as --dataset. A dataset already prepared under --name from the same
--src (files unchanged) is reused; another --src or changed files are refused unless --overwrite.
The flags are the fields of `l4f_jax.programs.prepare_data.PrepareConfig`.
"""
from __future__ import annotations

from l4f_jax.config import define_flags, from_flags
from l4f_jax.programs.prepare_data import PrepareConfig, prepare
from l4f_jax.system import cli

define_flags(PrepareConfig)


@cli.main("prepare_data")
def main(argv):
  del argv
  cfg = from_flags(PrepareConfig)
  path, line = prepare(cfg)
  print(line)
  if cfg.src in ("shapes_windows", "shapes_val"):
    print(f"Score with --images={path}/images --gt_masks={path}/masks")
  else:
    print(f"Train with --dataset={path}")


if __name__ == "__main__":
  cli.run(main)
