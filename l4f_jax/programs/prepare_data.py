"""Training datasets (tfds array_record) from a folder of images or the built-in world:
`prepare(config) -> (dataset directory, summary line)`.

  from l4f_jax.config import resolve
  from l4f_jax.programs.prepare_data import PrepareConfig, prepare
  path, line = prepare(resolve(PrepareConfig, src="photos/", name="mine", size=256))

Folder images are resized (shorter side, LANCZOS) and centre-cropped as rosinality's
prepare_data.py does, stored losslessly (PNG), decoded as experiments.segment decodes
(`datasets.image_folder`); a dataset already prepared under --name from the same --src (files
unchanged) is reused, another --src or changed files are refused unless `overwrite`. `src='shapes'`
(or `synthetic`) builds the built-in world (`datasets.shapes`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

from absl import logging

from l4f_jax.config import option
from l4f_jax.datasets import image_folder, shapes
from l4f_jax.errors import UserError
from l4f_jax.io.files import check_writable_dir


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  src: Optional[str] = option(None, "Folder of images (searched recursively), 'shapes', "
                              "'shapes_val' (the built-in world's validation split: exact masks "
                              "and backgrounds, disjoint from train and test; choices are made "
                              "on it) or 'shapes_windows' (non-square windows of the built-in "
                              "world with exact masks, a validation set for --fit).")
  name: Optional[str] = option(None, "Dataset name (directory under --data_dir); defaults to "
                               "'l4f_shapes' for shapes.")
  size: Optional[int] = option(None, "Output image side in pixels (default 64 for shapes).",
                               ge=1)
  data_dir: str = option("workspace/datasets", "Where datasets are written.", nonempty=True)
  synthetic: bool = option(False, "Build l4f_shapes (same as --src=shapes).")
  num_examples: int = option(4096, "Number of l4f_shapes examples.", ge=1)
  seed: Optional[int] = option(None, "l4f_shapes seed (default 0; for shapes_val 1: the real "
                               "test split's seed 0 is refused there).", ge=0)
  overwrite: bool = option(False, "Rebuild a dataset already prepared under --name from another "
                           "--src (or from files that changed since).")


def _windows(cfg: PrepareConfig, t0: float) -> tuple[str, str]:
  """<data_dir>/<name or l4f_shapes_windows>/images and masks: --num_examples windows cut from
  --size (default 128) px frames (`shapes.render_window_example`)."""
  check_writable_dir(cfg.data_dir, "--data_dir")
  path = os.path.join(cfg.data_dir, cfg.name or "l4f_shapes_windows")
  size = cfg.size or 128
  path = shapes.export_real_test_split(path, size=size, n=cfg.num_examples, seed=cfg.seed or 0,
                                       overwrite=cfg.overwrite, windows=True)
  return path, (f"l4f_shapes windows: {cfg.num_examples} non-square images cut from {size}px "
                f"frames, with exact masks, in {path} ({time.time() - t0:.1f} s)")


def _validation(cfg: PrepareConfig, t0: float) -> tuple[str, str]:
  """<data_dir>/<name or l4f_shapes_val>/images, masks and backgrounds: --num_examples images of
  the validation split (`shapes.ensure_real_val_split`)."""
  check_writable_dir(cfg.data_dir, "--data_dir")
  path = os.path.join(cfg.data_dir, cfg.name or "l4f_shapes_val")
  size, seed = cfg.size or 64, shapes.VALIDATION_SEED if cfg.seed is None else cfg.seed
  if seed == shapes.REAL_TEST_SEED:
    raise UserError(f"--src=shapes_val --seed={seed}: that is the real test split's seed, so the "
                    f"validation images would be the test images; pass another --seed (default "
                    f"{shapes.VALIDATION_SEED})")
  path = shapes.export_real_test_split(path, size=size, n=cfg.num_examples, seed=seed,
                                       overwrite=cfg.overwrite, validation=True)
  return path, (f"l4f_shapes validation split: {cfg.num_examples} images at {size}px (seed "
                f"{seed}), with exact masks and backgrounds, in {path} ({time.time() - t0:.1f} s)")


def prepare(cfg: PrepareConfig) -> tuple[str, str]:
  """Builds (or reuses) the dataset; returns its directory and a one-line summary."""
  t0 = time.time()
  if cfg.src == "shapes_windows":
    return _windows(cfg, t0)
  if cfg.src == "shapes_val":
    return _validation(cfg, t0)
  synthetic = cfg.synthetic or cfg.src == "shapes"
  needed = ((cfg.src, "--src is required: a folder of images, or --src=shapes"),
            (cfg.name, "--name is required for an image folder, e.g. --name=ffhq"),
            (cfg.size, "--size is required for an image folder, e.g. --size=256"))
  for value, what in needed:
    if not (synthetic or value):
      raise UserError(what)
  check_writable_dir(cfg.data_dir, "--data_dir")
  if synthetic:
    if cfg.name not in (None, "l4f_shapes"):
      logging.warning("--name is ignored for shapes (directory is l4f_shapes)")
    size = cfg.size or 64
    try:
      path = shapes.prepare_shapes(cfg.data_dir, size=size, num_examples=cfg.num_examples,
                                   seed=cfg.seed or 0)
    except ValueError as e:
      raise UserError(str(e)) from None
    return path, (f"l4f_shapes: {cfg.num_examples} images at {size}px in {path} "
                  f"({time.time() - t0:.1f} s)")
  try:
    r = image_folder.prepare_image_folder(cfg.src, cfg.data_dir, cfg.name, cfg.size,
                                          overwrite=cfg.overwrite)
  except (ValueError, FileNotFoundError) as e:
    raise UserError(str(e)) from None
  verb = "already prepared" if r["reused"] else "written"
  return r["path"], (f"{cfg.name}: {r['written']} images {verb}, {r['skipped']} unreadable "
                     f"skipped, at {cfg.size}px in {r['path']} ({time.time() - t0:.1f} s)")
