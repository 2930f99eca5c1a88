"""Prepare a training dataset (tfds array_record) from an image folder or the procedural shapes.

  python -m experiments.prepare_data --src=<folder> --name=ffhq --size=256
  python -m experiments.prepare_data --src=shapes --size=64 [--num_examples=4096 --seed=0]
  python -m experiments.prepare_data --synthetic --size=64

Folder images are resized (shorter side, LANCZOS) and centre-cropped as rosinality's
prepare_data.py does, stored losslessly (PNG), decoded as experiments.segment decodes (16-bit and
float greyscale scaled by their depth, transparency over white, EXIF orientation applied). Prints
the dataset directory to pass as --dataset. A dataset already prepared under --name from the same
--src (files unchanged) is reused; another --src or changed files are refused unless --overwrite.
"""
from __future__ import annotations

import time

from absl import flags, logging

from l4f_jax.system import cli
from l4f_jax.errors import UserError

_SRC = flags.DEFINE_string("src", None, "Folder of images (searched recursively), or 'shapes'.")
_NAME = flags.DEFINE_string("name", None, "Dataset name (directory under --data_dir); "
                            "defaults to 'l4f_shapes' for shapes.")
_SIZE = flags.DEFINE_integer("size", None, "Output image side in pixels (default 64 for shapes).")
_DATA_DIR = flags.DEFINE_string("data_dir", "workspace/datasets", "Where datasets are written.")
_SYNTHETIC = flags.DEFINE_boolean("synthetic", False, "Build l4f_shapes (same as --src=shapes).")
_NUM = flags.DEFINE_integer("num_examples", 4096, "Number of l4f_shapes examples.")
_SEED = flags.DEFINE_integer("seed", 0, "l4f_shapes seed.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Rebuild a dataset already prepared under "
                                  "--name from another --src (or from files that changed since).")


@cli.main("prepare_data")
def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from l4f_jax.datasets import image_folder, shapes
  from l4f_jax.config import stop_if_parse_only
  from l4f_jax.io.files import check_writable_dir
  t0 = time.time()
  synthetic = _SYNTHETIC.value or _SRC.value == "shapes"
  needed = ((_SRC.value, "--src is required: a folder of images, or --src=shapes"),
            (_NAME.value, "--name is required for an image folder, e.g. --name=ffhq"),
            (_SIZE.value, "--size is required for an image folder, e.g. --size=256"))
  for value, what in needed:
    if not (synthetic or value):
      raise UserError(what)
  stop_if_parse_only()
  check_writable_dir(_DATA_DIR.value, "--data_dir")
  if synthetic:
    if _NAME.value not in (None, "l4f_shapes"):
      logging.warning("--name is ignored for shapes (directory is l4f_shapes)")
    size = _SIZE.value or 64
    try:
      path = shapes.prepare_shapes(_DATA_DIR.value, size=size, num_examples=_NUM.value,
                                   seed=_SEED.value)
    except ValueError as e:
      raise UserError(str(e)) from None
    print(f"l4f_shapes: {_NUM.value} images at {size}px in {path} ({time.time() - t0:.1f} s)")
  else:
    try:
      r = image_folder.prepare_image_folder(_SRC.value, _DATA_DIR.value, _NAME.value, _SIZE.value,
                                            overwrite=_OVERWRITE.value)
    except (ValueError, FileNotFoundError) as e:
      raise UserError(str(e)) from None
    path = r["path"]
    verb = "already prepared" if r["reused"] else "written"
    print(f"{_NAME.value}: {r['written']} images {verb}, {r['skipped']} unreadable skipped, "
          f"at {_SIZE.value}px in {r['path']} ({time.time() - t0:.1f} s)")
  print(f"Train with --dataset={path}")


if __name__ == "__main__":
  cli.run(main)
