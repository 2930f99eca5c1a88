"""Input pipeline: prepared tfds datasets -> deterministic, resumable, host-sharded batches.

The batch of global step `s` is a pure function of (seed, s, process_index, process_count):
- epoch `e = s // steps_per_epoch` (steps_per_epoch = N // global_batch, drop_last) uses the
  permutation `default_rng([seed, 0, e]).permutation(N)` of record indices;
- the global batch is that permutation's slice `[(s % steps_per_epoch) * B, ... + B)`;
- host `p` of `P` takes rows `[p * B/P, (p + 1) * B/P)` of it (disjoint, together the global batch);
- horizontal flips (p = 0.5) come from `default_rng([seed, 1, s]).random(B) < 0.5`, row by row of
  the global batch, so the union over hosts equals the single-host batch.
So resuming at step s gives the same batches as an uninterrupted run.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np

_PERM_TAG, _FLIP_TAG = 0, 1
MASK_KEYS = ("mask", "alpha")  # uint8 [H, W, 1] features returned as float32 in [0, 1]
PREPARE_HINT = ("python -m experiments.prepare_data --src=<image folder> --name=<name> --size=<px> "
                "(or --src=shapes)")


def find_dataset_dir(path) -> str:
  """The directory holding dataset_info.json: `path` itself or its only such descendant."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--dataset={path}: no such directory; prepare one with {PREPARE_HINT}")
  if os.path.exists(os.path.join(path, "dataset_info.json")):
    return path
  found = sorted(root for root, dirs, files in os.walk(path) if "dataset_info.json" in files
                and not os.path.basename(root).startswith("incomplete."))
  if len(found) == 1:
    return found[0]
  if not found:
    raise FileNotFoundError(f"--dataset={path}: no prepared dataset (dataset_info.json) found; "
                            f"prepare one with {PREPARE_HINT}")
  raise ValueError(f"--dataset={path}: several prepared datasets inside ({', '.join(found)}); "
                   "pass one of them")


def dataset_name(path) -> str:
  """The tfds name stored with a prepared dataset ('' if unknown)."""
  import json  # pylint: disable=import-outside-toplevel
  try:
    with open(os.path.join(find_dataset_dir(path), "dataset_info.json")) as f:
      return json.load(f).get("name", "")
  except (OSError, ValueError):
    return ""


def open_dataset(path, split: str = "train"):
  """Opens a prepared dataset; returns (random-access source, image size in pixels).

  `path` is a tfds builder directory (…/<version>) or a folder containing exactly one.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # slow import
  d = find_dataset_dir(path)
  builder = tfds.builder_from_directory(d)
  shape = builder.info.features["image"].shape
  if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
    raise ValueError(f"--dataset={d}: expected square RGB images, got feature shape {shape}")
  return builder.as_data_source(split=split), int(shape[0])


def prepare_and_open(path, prepare_shapes: int = 0, shapes_size: int = 64):
  """`open_dataset`, after building l4f_shapes (`prepare_shapes` images at `shapes_size` px) under
  `path` when `prepare_shapes` > 0 and it is not there yet (the CLIs' --prepare_shapes)."""
  if prepare_shapes:
    from l4f_jax.datasets.shapes import ensure_shapes  # pylint: disable=import-outside-toplevel
    ensure_shapes(path, shapes_size, prepare_shapes, seed=0)
  return open_dataset(path)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, _PERM_TAG, epoch]).permutation(num_examples)


def global_flips(global_batch: int, seed: int, step: int) -> np.ndarray:
  return np.random.default_rng([seed, _FLIP_TAG, step]).random(global_batch) < 0.5


def host_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """This host's rows of the global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index/process_count {process_index}/{process_count}")
  if global_batch % process_count:
    raise ValueError(f"--batch={global_batch} must be divisible by the process count "
                     f"{process_count}")
  b = global_batch // process_count
  return slice(process_index * b, (process_index + 1) * b)


def scale_images(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (x / 127.5 - 1)."""
  return images_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


class Loader:
  """Deterministic per-host batches of a random-access source (see the module docstring).

  `batch(step)` returns {'image': float32 [b, H, W, 3] in [-1, 1], 'id': int64 [b],
  'index': int64 [b] (record index), 'flip': bool [b]} plus 'mask' / 'alpha' float32
  [b, H, W, 1] in [0, 1] when the source has them (MASK_KEYS); b = global_batch // process_count.
  `iterate(start)` prefetches in a background thread.
  """

  def __init__(self, source, global_batch: int, seed: int = 0, process_index: int = 0,
               process_count: int = 1, flip: bool = True):
    self.source = source
    self.num_examples = len(source)
    self.global_batch = int(global_batch)
    self.seed = int(seed)
    self.flip = flip
    self.rows = host_rows(self.global_batch, process_index, process_count)
    if self.global_batch < 1 or self.num_examples < self.global_batch:
      raise ValueError(f"--batch={global_batch}: needs 1 <= batch <= dataset size "
                       f"({self.num_examples} examples)")
    self.steps_per_epoch = self.num_examples // self.global_batch
    self._lock = threading.Lock()
    self._perm = (None, None)

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if self._perm[0] != epoch:
        self._perm = (epoch, epoch_permutation(self.num_examples, self.seed, epoch))
      return self._perm[1]

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, flip flags) of this host's share of global step `step`."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, within = divmod(int(step), self.steps_per_epoch)
    perm = self._permutation(epoch)
    idx = perm[within * self.global_batch:(within + 1) * self.global_batch][self.rows]
    flips = global_flips(self.global_batch, self.seed, int(step))[self.rows]
    return idx.astype(np.int64), flips & self.flip

  def batch(self, step: int) -> dict:
    idx, flips = self.indices(step)
    getitems = getattr(self.source, "__getitems__", None)
    records = (getitems([int(i) for i in idx]) if getitems else
               [self.source[int(i)] for i in idx])
    images = np.stack([r["image"] for r in records])
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    out = {"image": scale_images(images), "index": idx, "flip": flips,
           "id": np.asarray([r.get("id", -1) for r in records], np.int64)}
    for key in MASK_KEYS:  # per-pixel targets follow the image's flips, scaled to [0, 1]
      if key in records[0]:
        m = np.stack([r[key] for r in records])
        m = np.where(flips[:, None, None, None], m[:, :, ::-1], m)
        out[key] = m.astype(np.float32) / np.float32(255.0)
    return out

  def iterate(self, start_step: int = 0, prefetch: int = 2, num_steps: int | None = None):
    """Yields (step, batch) from `start_step` on, computed `prefetch` steps ahead in a thread.

    Stops after `num_steps` steps if given; closing the generator stops the thread.
    """
    q = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    end = None if num_steps is None else start_step + num_steps

    def put(item) -> bool:
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          return True
        except queue.Full:
          pass
      return False

    def work():
      step = start_step
      while end is None or step < end:
        try:
          item = (step, self.batch(step))
        except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
          put(e)
          return
        if not put(item):
          return
        step += 1
      put(None)

    thread = threading.Thread(target=work, name="l4f-data-prefetch", daemon=True)
    thread.start()
    try:
      while True:
        item = q.get()
        if item is None:
          return
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()
      thread.join(timeout=5.0)
