"""A student segmenter over raw images: the runtime that `segment`, `evaluate --segmenter`, the
pipeline and the Python API (`l4f_jax.Segmenter`) share.

  from l4f_jax import Segmenter
  seg = Segmenter.load("workspace/runs/shapes/segmenter")   # or an exported artifact folder
  alpha = seg(image)              # float32 [H, W] in [0, 1] at the image's own size
  alphas = seg([img1, img2])      # a list in, a list out; any sizes, numpy or PIL
  masks = seg.masks([img1, img2])  # bool, alpha > the export's threshold

  model = load_model(DIR)         # what the programs use: a weight directory or an artifact
  for chunk in predictions(model, todo, max_pixels=image_io.MAX_PIXELS, skipped=[], fit="pad"):
    for k, path, stem, rgb, alpha_hw in chunk: ...

Per input, the picture meets the model's square by `fit` (`image_io.fit_tiles`: 'pad' to a square
by edge replication, 'crop' into overlapping squares, or 'stretch'); the tiles are segmented in
batches of `batch` x devices by one jitted program sharded over all local devices (an artifact runs
on the first device), and the tiles' soft masks become one mask at the input's own size
(`image_io.unfit_alpha`). Files are read in batches holding at most `image_io.PIXEL_BUDGET`
pixels, so memory does not grow with the photos' size; unreadable inputs and inputs over
`max_pixels` go to `skipped`. A non-finite prediction is refused with one line.

The default fit is 'pad' (`DEFAULT_FIT`): the student saw only G's square frames, with the object
at its natural aspect and whole; padding keeps both (stretching distorts the object, crops cut it),
and on non-square images of the built-in world it scores best (docs/segmentation.md).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator

import jax
import numpy as np

from l4f_jax.config import option
from l4f_jax.errors import UserError
from l4f_jax.io import image_io
from l4f_jax.method import masks as masks_lib
from l4f_jax.method import student as student_lib
from l4f_jax.system import artifact, sharding, weights

DEFAULT_FIT = "pad"


def segmenter_option():
  """The `--segmenter` field of the programs that run a segmenter (segment, serve)."""
  return option("workspace/runs/shapes/segmenter", "Segmenter export (python -m "
                "experiments.train_student) or an exported artifact (python -m "
                "experiments.export_segmenter).", nonempty=True)


def threshold_option():
  """Their `--threshold` field: None keeps the threshold the segmenter was exported with."""
  return option(None, "Hard mask = alpha > threshold (default: the export's).", ge=0, le=1)


@dataclasses.dataclass(frozen=True)
class Model:
  """A runnable segmenter: `run(uint8 [step, S, S, 3]) -> alpha [step, S, S]` and what it is."""
  path: str
  size: int
  threshold: float
  fingerprint: str
  step: int
  run: Callable

  def __call__(self, tiles: np.ndarray) -> np.ndarray:
    """Any number of uint8 tiles [N, S, S, 3] -> float32 alpha [N, S, S] (padded to `step`)."""
    out = []
    for i in range(0, len(tiles), self.step):
      x = tiles[i:i + self.step]
      n = len(x)
      if n < self.step:
        x = np.concatenate([x, np.zeros((self.step - n,) + x.shape[1:], x.dtype)])
      out.append(self.run(x)[:n])
    alpha = np.concatenate(out) if out else np.zeros((0, self.size, self.size), np.float32)
    if not np.all(np.isfinite(alpha)):
      raise UserError(f"--segmenter={self.path} predicted non-finite masks; retrain it, nothing "
                      "was written")
    return alpha


def _weights_model(seg: weights.LoadedSegmenter, batch: int) -> Model:
  mesh = sharding.local_mesh()   # each process of a multi-process run segments its own share
  params = sharding.replicate(seg.params, mesh)
  fn = jax.jit(functools.partial(student_lib.alpha_from_uint8, model=seg.module))
  shd = jax.sharding.NamedSharding(mesh, sharding.SHARDED)
  run = lambda x: np.asarray(jax.device_get(fn(params, jax.device_put(x, shd))))
  return Model(path=seg.path, size=seg.size, threshold=seg.threshold,
               fingerprint=weights.fingerprint(seg.params), step=batch * mesh.devices.size,
               run=run)


def load_model(path: str, batch: int = 16, flag: str = "--segmenter") -> Model:
  """A segmenter weight directory (`experiments.train_student`) or an exported artifact
  (`experiments.export_segmenter`: its folder or its model.jax), ready to run."""
  if artifact.is_artifact(path):
    art = artifact.load_artifact(path, flag)
    return Model(path=path, size=art.size, threshold=art.threshold, fingerprint=art.fingerprint,
                 step=batch, run=artifact.artifact_runner(art))
  return _weights_model(weights.load_segmenter(path, flag), batch)


def alphas(model: Model, rgbs: list, fit: str) -> list[np.ndarray]:
  """Soft masks float32 [H, W] of uint8 RGB pictures [H, W, 3] of any sizes (module docstring)."""
  fitted = [image_io.fit_tiles(rgb, model.size, fit) for rgb in rgbs]
  if not fitted:
    return []
  tiles = model(np.concatenate([t for t, _ in fitted]))
  ends = np.cumsum([len(t) for t, _ in fitted])
  return [image_io.unfit_alpha(tiles[e - len(t):e], plan) for (t, plan), e in zip(fitted, ends)]


def predictions(model: Model, todo: list, max_pixels: int, skipped: list,
                fit: str = DEFAULT_FIT) -> Iterator[list]:
  """Yields, per batch, [(index, path, stem, rgb uint8 [H, W, 3], alpha float32 [H, W])] for the
  readable inputs of `todo` ((index, path, stem) triples); unreadable ones are appended to
  `skipped` as {'file', 'reason'}."""
  for chunk in image_io.read_batches(todo, model.step, max_pixels, skipped):
    try:
      out = alphas(model, [c[3] for c in chunk], fit)
    except UserError as e:
      raise UserError(f"{e} (for {chunk[0][1]})") from None
    yield [(k, path, stem, rgb, a) for (k, path, stem, rgb), a in zip(chunk, out)]


class Segmenter:
  """The Python API: a trained student (weight directory or artifact) over pictures of any size.

  `Segmenter.load(path)(images)`: `images` is one picture or a list (NumPy arrays or PIL images,
  `image_io.as_rgb`); returns float32 alpha [H, W] in [0, 1] at each picture's own size (a list
  for a list). The same code path as `experiments.segment` (`alphas`), so equal inputs give equal
  masks.
  """

  def __init__(self, model: Model, fit: str = DEFAULT_FIT):
    if fit not in image_io.FITS:
      raise UserError(f"fit={fit!r} must be one of {list(image_io.FITS)}")
    self.model, self.fit = model, fit

  @classmethod
  def load(cls, path: str | os.PathLike, fit: str = DEFAULT_FIT, batch: int = 16) -> "Segmenter":
    """Loads a segmenter directory or an exported artifact (folder or model.jax)."""
    return cls(load_model(os.fspath(path), batch, flag="Segmenter.load"), fit)

  @property
  def size(self) -> int:
    return self.model.size

  @property
  def threshold(self) -> float:
    return self.model.threshold

  def __call__(self, images, fit: str | None = None):
    single = not isinstance(images, (list, tuple))
    fit = fit or self.fit
    if fit not in image_io.FITS:
      raise UserError(f"fit={fit!r} must be one of {list(image_io.FITS)}")
    out = alphas(self.model, [image_io.as_rgb(x) for x in ([images] if single else images)], fit)
    return out[0] if single else out

  def masks(self, images, threshold: float | None = None, fit: str | None = None):
    """Hard masks (bool [H, W]): alpha > threshold (default: the export's), `method.masks`."""
    t = self.threshold if threshold is None else threshold
    out = self(images, fit)
    return (masks_lib.hard_mask(out, t) if isinstance(out, np.ndarray)
            else [masks_lib.hard_mask(a, t) for a in out])
