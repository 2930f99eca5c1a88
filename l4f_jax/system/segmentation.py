"""A student segmenter over raw images: the runtime that `segment`, `evaluate --segmenter` and the
pipeline share.

  seg = weights.load_segmenter(DIR)
  for chunk in predictions(seg, todo, batch=16, max_pixels=image_io.MAX_PIXELS, skipped=[]):
    for k, path, stem, rgb, alpha_hw in chunk: ...

Per input (decoded by `image_io.read_rgb`), the whole image is resized to the segmenter's size
(`image_io.to_model_input`), segmented by one jitted program sharded over all local devices, and
the soft mask resized back to the input's own size (`image_io.alpha_to_original`). Inputs are read
in batches of at most `batch` x devices images holding at most `image_io.PIXEL_BUDGET` pixels, so
memory does not grow with the photos' size; unreadable inputs and inputs over `max_pixels` go to
`skipped`. A non-finite prediction is refused with one line.
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import numpy as np

from l4f_jax.errors import UserError
from l4f_jax.io import image_io
from l4f_jax.method import student as student_lib
from l4f_jax.system import sharding, weights


def predictor(seg: weights.Segmenter, mesh):
  """fn(images float32 [N, S, S, 3] in [-1, 1], N a multiple of the mesh size) -> alpha
  [N, S, S, 1] as NumPy, sharded over the mesh's devices."""
  params = sharding.replicate(seg.params, mesh)
  fn = jax.jit(functools.partial(student_lib.predict_alpha, model=seg.module))
  shd = jax.sharding.NamedSharding(mesh, sharding.SHARDED)
  return lambda x: np.asarray(jax.device_get(fn(params, jax.device_put(x, shd))))


def predictions(seg: weights.Segmenter, todo: list, batch: int, max_pixels: int,
                skipped: list) -> Iterator[list]:
  """Yields, per batch, [(index, path, stem, rgb uint8 [H, W, 3], alpha float32 [H, W])] for the
  readable inputs of `todo` ((index, path, stem) triples); unreadable ones are appended to
  `skipped` as {'file', 'reason'}."""
  mesh = sharding.make_mesh(len(jax.local_devices()))
  step = batch * mesh.devices.size
  run = predictor(seg, mesh)
  for chunk in image_io.read_batches(todo, step, max_pixels, skipped):
    x = np.stack([image_io.to_model_input(c[3], seg.size) for c in chunk])
    x = np.concatenate([x, np.zeros((step - len(x),) + x.shape[1:], x.dtype)])
    alpha = run(x)[:len(chunk), ..., 0]
    if not np.all(np.isfinite(alpha)):
      raise UserError(f"--segmenter={seg.path} predicted non-finite masks (for {chunk[0][1]}); "
                      "retrain it, nothing was written")
    yield [(k, path, stem, rgb, image_io.alpha_to_original(a, rgb.shape[:2]))
           for (k, path, stem, rgb), a in zip(chunk, alpha)]
