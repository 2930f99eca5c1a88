"""A user's folder of images (FFHQ, LSUN exports, ...) as a tfds array_record dataset.

Preparation follows rosinality's `prepare_data.py`: convert to RGB, resize the shorter side to
`size` with LANCZOS (longer side `int(size * long / short)`), centre crop `size` x `size` (offsets
`round((dim - size) / 2)`). Unlike rosinality (JPEG quality 100) images are stored as PNG, so an
image that is already `size` x `size` RGB round-trips pixel-exact. Files are decoded by the
project's one decoder, `l4f_jax.io.image_io.read_rgb` (the rules of `experiments.segment`):
16-bit and float greyscale are scaled by their depth (Pillow's own `convert('RGB')` clips them to
all-white or all-black), transparency is composited over white and the EXIF orientation is applied.

Layout: `<data_dir>/<name>/<size>px/1.0.0/`. Features: `image` uint8 [size, size, 3] (PNG), `id`
int64 (0.. in natural order of the written files), `filename` (path relative to the source folder).
Records come back in hashed order, so use `id` / `filename` to identify an example. Files are
found recursively by extension; unreadable ones are skipped, counted and logged.

A prepared dataset records its source folder and a fingerprint of the folder's listing (paths,
sizes, modification times) in `l4f_counts.json`. Preparing the same name and size again reuses it
only when both match; another --src, or a source whose files changed, is refused with one line
unless `overwrite`, which rebuilds it (the old dataset is kept until the new one is complete).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import types

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from l4f_jax.datasets.build import build
from l4f_jax.io import image_io

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm")
_CHUNK = 256
_COUNTS_FILE = "l4f_counts.json"


def natural_key(text: str):
  """Sort key that orders embedded integers numerically ('img2' < 'img10')."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_images(src) -> list[str]:
  """Relative POSIX paths of the image files under src (recursive; the one walk of
  `image_io.walk_images`: a symlink loop is walked once), in natural order."""
  src = os.fspath(src)
  return [os.path.relpath(p, src).replace(os.sep, "/")
          for p in image_io.walk_images(src, IMAGE_EXTENSIONS)]


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
  """rosinality `resize_and_convert` minus JPEG: RGB, shorter side -> size, centre crop."""
  img = img.convert("RGB")
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  img = img.resize((new_w, new_h), Image.LANCZOS)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def _load_png(path: str, size: int) -> bytes | None:
  """PNG bytes of the prepared image, or None when the file cannot be read."""
  try:
    rgb = image_io.read_rgb(path)
  except image_io.UnreadableImage as e:
    logging.warning("Skipping %s", e)
    return None
  out = resize_and_crop(Image.fromarray(rgb), size)
  buf = io.BytesIO()
  out.save(buf, format="PNG")
  return buf.getvalue()


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """size: output side in pixels."""
  size: int = 256


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder; use `builder_class(name)` to get one whose directory is named after the dataset.

  The source folder is passed as `manual_dir` (tfds DownloadConfig).
  """

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the image folder as manual_dir (prepare_data --src)."
  num_written = 0
  num_skipped = 0

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No checksums file; tfds' default lookup imports the absent `importlib_resources`.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Image folder prepared at {s}x{s} (LANCZOS shorter side, centre crop), PNG.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "id": tfds.features.Scalar(dtype=np.int64),
            "filename": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, src):
    size = self.builder_config.size
    files = list_images(src)
    self.num_written = self.num_skipped = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
      for start in range(0, len(files), _CHUNK):
        chunk = files[start:start + _CHUNK]
        encoded = pool.map(lambda f: _load_png(os.path.join(src, f), size), chunk)
        for rel, png in zip(chunk, encoded):
          if png is None:
            self.num_skipped += 1
            continue
          yield rel, {"image": png, "id": self.num_written, "filename": rel}
          self.num_written += 1


def builder_class(name: str) -> type[ImageFolderBuilder]:
  """An ImageFolderBuilder subclass whose tfds name (and directory) is `name`."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"--name={name!r}: use lowercase letters, digits and '_' "
                     "(starting with a letter), e.g. --name=ffhq")
  return types.new_class(f"ImageFolder_{name}", (ImageFolderBuilder,),
                         {"skip_registration": True}, lambda ns: ns.update(name=name))


def dataset_dir(data_dir, name: str, size: int) -> str:
  """Where `prepare_image_folder` puts the dataset."""
  return os.path.join(os.fspath(data_dir), name, f"{size}px", str(ImageFolderBuilder.VERSION))


def source_fingerprint(src: str, files: list[str]) -> str:
  """sha256 (16 hex digits) of the listing of `files` under `src`: paths, sizes, mtimes."""
  h = hashlib.sha256()
  for rel in files:
    st = os.stat(os.path.join(src, rel))
    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def prepare_image_folder(src, data_dir, name: str, size: int, overwrite: bool = False) -> dict:
  """Builds (or reuses) the dataset; returns {'path', 'written', 'skipped', 'reused'}.

  Raises ValueError / FileNotFoundError with a one-line message naming the flag to fix; an existing
  dataset of another (or a changed) source is refused unless `overwrite` (module docstring).
  """
  src = os.path.abspath(os.fspath(src))
  if size < 4:
    raise ValueError(f"--size={size}: must be at least 4 pixels")
  cls = builder_class(name)
  out = dataset_dir(data_dir, name, size)
  exists = os.path.exists(os.path.join(out, "dataset_info.json"))
  if not os.path.isdir(src):
    if exists and not overwrite:  # the dataset alone is enough to train
      return _reuse(out, name, src, None)
    raise FileNotFoundError(f"--src={src}: not a directory; point it at a folder of images")
  files = list_images(src)
  if not files:
    raise ValueError(f"--src={src}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found "
                     "(searched recursively)")
  fingerprint = source_fingerprint(src, files)
  if exists and not overwrite:
    return _reuse(out, name, src, fingerprint)
  old = None
  if os.path.lexists(out):  # overwrite: keep the old dataset aside until the new one is complete
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.dirname(out))}.old-",
                           dir=os.path.dirname(os.path.dirname(out)))
    os.rename(os.path.dirname(out), os.path.join(old, "x"))
  try:
    builder = cls(config=ImageFolderConfig(name=f"{size}px", size=size),
                  data_dir=os.fspath(data_dir), file_format="array_record")
    try:
      build(builder, manual_dir=src)
    except Exception:  # tfds refuses an empty split ("No examples were yielded")
      if builder.num_written == 0 and builder.num_skipped == len(files):
        raise ValueError(f"--src={src}: none of the {len(files)} image files could be read") \
            from None
      raise
    counts = dict(written=builder.num_written, skipped=builder.num_skipped)
    _write_json_atomic(os.path.join(out, _COUNTS_FILE),
                       dict(counts, source=src, size=size, source_fingerprint=fingerprint))
  except BaseException:
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    if old is not None:
      os.rename(os.path.join(old, "x"), os.path.dirname(out))
      shutil.rmtree(old, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  logging.info("Prepared %s: %d images written, %d unreadable skipped", out, counts["written"],
               counts["skipped"])
  return dict(path=out, reused=False, **counts)


def _reuse(out: str, name: str, src: str, fingerprint) -> dict:
  """The existing dataset at `out` if it was prepared from `src` as it is now (else ValueError)."""
  stored = _read_json(os.path.join(out, _COUNTS_FILE))
  old_src = stored.get("source")
  fix = "pass --overwrite to rebuild it, or another --name"
  if old_src is not None and os.path.abspath(old_src) != src:
    raise ValueError(f"--name={name}: {out} was prepared from --src={old_src}, not --src={src}; "
                     f"{fix}")
  old_fp = stored.get("source_fingerprint")
  if fingerprint is not None and old_fp is not None and old_fp != fingerprint:
    raise ValueError(f"--src={src}: its files changed since {out} was prepared from it; {fix}")
  logging.info("Dataset already prepared in %s; --overwrite rebuilds it.", out)
  return dict(path=out, reused=True, **_read_counts(out))


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      obj = json.load(f)
    return obj if isinstance(obj, dict) else {}
  except (OSError, ValueError):
    return {}


def _read_counts(path: str) -> dict:
  try:
    with open(os.path.join(path, _COUNTS_FILE)) as f:
      c = json.load(f)
    return dict(written=int(c["written"]), skipped=int(c["skipped"]))
  except (OSError, ValueError, KeyError):
    n = tfds.builder_from_directory(path).info.splits["train"].num_examples
    return dict(written=int(n), skipped=0)


def _write_json_atomic(path: str, obj) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2)
  os.chmod(tmp, 0o644)
  os.replace(tmp, path)
