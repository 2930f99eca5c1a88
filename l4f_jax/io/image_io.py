"""Raw images in, masks out: listing, decoding, model input, mask write-back and contact sheets.

Decoding rules (`read_rgb`), every input ends as uint8 RGB [H, W, 3]:
- The first frame is read (animated GIF / multi-page TIFF), then the EXIF orientation is applied
  (`ImageOps.exif_transpose`; a broken EXIF block is ignored, the pixels are kept as stored).
- Transparency (LA, La, RGBA, RGBa, PA, P or L or RGB with a `transparency` key) is composited over
  WHITE: out = a * colour + (1 - a) * 255, a = alpha / 255. A transparent pixel therefore reads as
  white, the usual flattening of a cut-out (viewers, JPEG export), and a neutral colour for the
  segmenter. Opaque pixels keep their exact values.
- 1-bit and 8-bit greyscale (1, L) are replicated to R = G = B.
- 16-bit greyscale (I;16, I;16L, I;16B, I;16N) is scaled by its bit depth: v8 = round(v * 255 /
  65535), so 65535 -> 255 and 32768 -> 128 (Pillow's own convert would clip at 255 and turn almost
  every 16-bit picture white).
- 32-bit integer greyscale (I): the depth comes from the TIFF BitsPerSample tag when it is <= 16;
  otherwise (32-bit or unknown) values <= 65535 are read as 16-bit, and a larger maximum scales the
  image by its maximum. Negative values become 0.
- 32-bit float greyscale (F): non-finite values become 0, negative values 0; values in [0, 1] map
  to [0, 255]; if the maximum exceeds 1 the image is divided by its maximum first (an HDR or
  raw-count float image is shown with its brightest pixel white, never clipped to all-white).
- CMYK, YCbCr, HSV and palette images go through Pillow's `convert('RGB')` (CMYK JPEGs with an Adobe
  marker are un-inverted by Pillow). Embedded ICC colour profiles are not applied: pixels are taken
  as sRGB.
- Anything Pillow cannot open or fully decode (a text file named .png, a truncated file, an
  unsupported mode) raises `UnreadableImage` (a `UserError`) with a one-line reason.
- An image of more than `max_pixels` pixels (default `MAX_PIXELS`, 100 MP) is refused the same way
  before it is decoded (a decompression bomb or a panorama that would not fit in memory); the
  programs' `--max_pixels` raises the limit. Pillow's own bomb check is replaced by this one.

Model input (`to_model_input`): the WHOLE image is resized to size x size (LANCZOS, which
antialiases when shrinking); the aspect ratio is not kept, so nothing is cropped away. The
predicted alpha is resized back to the image's own H x W (`alpha_to_original`, bilinear), which
undoes the stretch: masks are written at the input's original size and aspect.

Output stems (`output_stems`): a file under the `--images` folder is named by its path relative to
that folder, without extension, with '/' replaced by '__' (`cats/a.jpg` -> `cats__a`); a file given
explicitly (outside that folder) by its file name without extension. A stem already taken
(case-insensitively, so that case-insensitive file systems cannot merge two outputs), e.g. `a.png`
next to `a.jpg` or two explicit `x/a.png`, `y/a.png`, gets `_1`, `_2`, ... (the first free one) in
input order.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from l4f_jax.method.evaluation import natural_key
from l4f_jax.errors import UserError, one_line
from l4f_jax.io.files import atomic_write
from l4f_jax.method import masks

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_LETTERBOX = 96      # grey level around a letterboxed picture in `contact_sheet`
_CHECKER = (204, 153)  # checkerboard grey levels behind cut-outs
_CHECKER_SQUARE = 8
MAX_PIXELS = 100_000_000
PIXEL_BUDGET = 200_000_000  # input pixels `read_batches` holds at once


class UnreadableImage(UserError):
  """A file that cannot be decoded as an image; the message is one line: path and reason."""


class TooManyPixels(UnreadableImage):
  """An image over the pixel limit, refused before it is decoded."""


# ----------------------------------------------------------------------------- listing


def walk_images(folder: str, extensions: tuple = IMAGE_EXTENSIONS) -> list[str]:
  """Image files under folder (recursive, symlinks followed, each real folder visited once so a
  symlink loop is walked once, hidden entries skipped), in natural order of their relative
  paths."""
  found, seen = [], set()
  for root, dirs, files in os.walk(folder, followlinks=True):
    real = os.path.realpath(root)
    if real in seen:  # a symlink loop or a second link to the same folder
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found.extend(os.path.join(root, f) for f in files
                 if not f.startswith(".") and f.lower().endswith(extensions))
  return sorted(found, key=lambda p: natural_key(os.path.relpath(p, folder).replace(os.sep, "/")))


def _split_spec(spec) -> list[str]:
  if isinstance(spec, (str, os.PathLike)):
    spec = os.fspath(spec)
    if os.path.exists(spec) or "," not in spec:
      return [spec]
    return [s.strip() for s in spec.split(",") if s.strip()]
  return [os.fspath(s) for s in spec]


def input_roots(spec) -> list[tuple[str, str]]:
  """('--images', path) of every folder or file that `spec` names (for `files.check_disjoint`)."""
  return [("--images", item) for item in _split_spec(spec)]


def list_inputs(spec: str | list[str]) -> list[str]:
  """The image files named by `--images`.

  Args:
    spec: a folder (searched recursively for png/jpg/jpeg/bmp/gif/tif/tiff/webp, hidden entries
      skipped, natural sort of the relative paths), one file, a comma-separated string of files
      (and/or folders), or a list of them. Explicit files keep the given order and are read
      whatever their extension; a path repeated is listed once.
  Returns:
    Paths (folder entries joined onto the folder as given).
  Raises:
    UserError naming --images when a path does not exist or nothing is found.
  """
  items = _split_spec(spec)
  if not items:
    raise UserError("--images is empty; pass a folder of images or comma-separated image files")
  out, seen = [], set()
  for item in items:
    if os.path.isdir(item):
      files = walk_images(item)
      if not files:
        kinds = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise UserError(f"--images={item}: no image files ({kinds}) in this folder or below; "
                        "pass a folder that holds images")
    elif os.path.isfile(item):
      files = [item]
    else:
      raise UserError(f"--images={item}: no such file or folder; pass a folder of images or "
                      "comma-separated image files")
    for f in files:
      key = os.path.abspath(f)
      if key not in seen:
        seen.add(key)
        out.append(f)
  return out


def output_stems(paths: list[str], root: str | None = None) -> list[str]:
  """Unique output stems for `paths` (rule in the module docstring).

  Args:
    paths: input files, e.g. from `list_inputs`.
    root: the `--images` value; when it is a folder, files under it are named by their relative
      path ('/' -> '__'), other files by their base name.
  """
  base_dir = os.path.abspath(root) if root is not None and os.path.isdir(root) else None
  stems, taken = [], set()
  for p in paths:
    full = os.path.abspath(p)
    inside = base_dir is not None and full != base_dir and (
        os.path.commonpath([base_dir, full]) == base_dir)
    if inside:
      rel = os.path.relpath(full, base_dir).replace(os.sep, "/")
    else:
      rel = os.path.basename(full)
    stem = os.path.splitext(rel)[0].replace("/", "__") or "image"
    candidate, k = stem, 0
    while candidate.casefold() in taken:
      k += 1
      candidate = f"{stem}_{k}"
    taken.add(candidate.casefold())
    stems.append(candidate)
  return stems


# ----------------------------------------------------------------------------- decoding


def _reason(e: BaseException) -> str:
  if isinstance(e, UnidentifiedImageError):
    return "not an image Pillow can identify"
  if isinstance(e, FileNotFoundError):
    return "no such file"
  if isinstance(e, IsADirectoryError):
    return "a folder, not an image file"
  text = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
  if "truncated" in text.lower():
    return f"truncated or corrupt ({text})"
  return f"cannot decode ({type(e).__name__}: {text})"


def _shown(path) -> str:
  """A path as given, or 'the upload' for a file object (`read_rgb` of an HTTP upload)."""
  return os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else "the upload"


def _unreadable(path, reason: str) -> UnreadableImage:
  return UnreadableImage(one_line(f"{_shown(path)}: unreadable image, {reason}; replace or "
                                  "remove the file"))


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 4] -> uint8 [H, W, 3], a * colour + (1 - a) * 255 rounded half up."""
  a = rgba[..., 3:4].astype(np.float64) / 255.0
  out = rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)
  return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)


def _grey_to_rgb(v01: np.ndarray) -> np.ndarray:
  g = np.floor(np.clip(v01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1)


def _integer_depth_max(img: Image.Image, values: np.ndarray) -> float:
  """Full-scale value of an 'I' (int32) image (module docstring rule)."""
  bits = None
  tags = getattr(img, "tag_v2", None)
  if tags is not None:
    b = tags.get(258)  # BitsPerSample
    if isinstance(b, (tuple, list)) and b:
      b = b[0]
    if isinstance(b, int) and 1 <= b <= 16:
      bits = b
  if bits is not None:
    return float(2 ** bits - 1)
  vmax = float(values.max()) if values.size else 0.0
  return 65535.0 if vmax <= 65535 else vmax


def _to_rgb_array(img: Image.Image) -> np.ndarray:
  """Decoded PIL image -> uint8 [H, W, 3] by the module docstring rules."""
  mode = img.mode
  if mode in _SIXTEEN_BIT:
    return _grey_to_rgb(np.asarray(img).astype(np.float64) / 65535.0)
  if mode == "I":
    v = np.asarray(img).astype(np.float64)
    v = np.maximum(v, 0.0)
    return _grey_to_rgb(v / max(_integer_depth_max(img, v), 1.0))
  if mode == "F":
    v = np.asarray(img).astype(np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    v = np.maximum(v, 0.0)
    vmax = float(v.max()) if v.size else 0.0
    return _grey_to_rgb(v / vmax if vmax > 1.0 else v)
  has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in img.info
  if has_alpha:
    return _composite_over_white(np.asarray(img.convert("RGBA")))
  if mode == "RGB":
    return np.asarray(img).copy()
  return np.asarray(img.convert("RGB"))


def _open(path):
  """Image.open without Pillow's own decompression-bomb check (`read_rgb` applies max_pixels)."""
  old = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    return Image.open(path)
  finally:
    Image.MAX_IMAGE_PIXELS = old


def read_rgb(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes one image file (a path, or a binary file object such as an upload's `io.BytesIO`)
  to uint8 RGB [H, W, 3] (rules in the module docstring).

  Raises:
    UnreadableImage (one line: the path and why) for missing, corrupt, truncated or non-image
    files, and TooManyPixels (a subclass) for images of more than `max_pixels` pixels (checked
    before decoding).
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Pillow's EXIF / palette notes; the pixel limit is ours
      with _open(path) as img:
        w, h = img.size
        if w * h > max_pixels:
          raise TooManyPixels(one_line(
              f"{_shown(path)}: {w}x{h} is {w * h / 1e6:.0f} MP, over the limit of "
              f"{max_pixels / 1e6:.0f} MP; pass --max_pixels={w * h} to read it"))
        img.load()
        try:
          oriented = ImageOps.exif_transpose(img)
        except Exception:  # pylint: disable=broad-except  # malformed EXIF: keep stored pixels
          oriented = img
        out = _to_rgb_array(oriented if oriented is not None else img)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure means "unreadable"
    raise _unreadable(path, _reason(e)) from e
  if out.ndim != 3 or out.shape[-1] != 3 or out.shape[0] == 0 or out.shape[1] == 0:
    raise _unreadable(path, f"decoded to an unusable shape {out.shape}")
  return out


def input_signature(paths: list[str], stems: list[str]) -> list:
  """(path, stem, size, mtime) of every input: a resumed run must see the same files."""
  sig = []
  for p, stem in zip(paths, stems):
    try:
      st = os.stat(p)
      sig.append([os.path.abspath(p), stem, st.st_size, st.st_mtime_ns])
    except OSError:
      sig.append([os.path.abspath(p), stem, None, None])
  return sig


def read_batches(todo: list, step: int, max_pixels: int, skipped: list):
  """Yields lists of (index, path, stem, rgb) of at most `step` readable inputs holding at most
  PIXEL_BUDGET pixels (one over-budget image goes alone); unreadable ones go to `skipped`."""
  chunk, pixels = [], 0
  for k, path, stem in todo:
    try:
      rgb = read_rgb(path, max_pixels)
    except UnreadableImage as e:
      skipped.append({"file": path, "reason": str(e)})
      logging.info("skipped %s", e)
      continue
    if chunk and pixels + rgb.shape[0] * rgb.shape[1] > PIXEL_BUDGET:
      yield chunk
      chunk, pixels = [], 0
    chunk.append((k, path, stem, rgb))
    pixels += rgb.shape[0] * rgb.shape[1]
    if len(chunk) == step:
      yield chunk
      chunk, pixels = [], 0
  if chunk:
    yield chunk


# ----------------------------------------------------------------------------- model in / out


def _check_rgb(rgb) -> np.ndarray:
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"expected uint8 RGB [H, W, 3], got {rgb.dtype} {rgb.shape}")
  return rgb


def _resize_rgb(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
  if rgb.shape[:2] == (h, w):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((w, h), Image.LANCZOS))


def _resize_alpha(alpha: np.ndarray, w: int, h: int) -> np.ndarray:
  a = np.asarray(alpha, np.float32)
  if a.shape != (h, w):
    a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))  # float32 [h, w]: mode F
  return np.clip(a, 0.0, 1.0).astype(np.float32)


def to_model_input(rgb_uint8, size: int) -> np.ndarray:
  """uint8 RGB [H, W, 3] -> float32 [size, size, 3] in [-1, 1].

  The whole image is resized (LANCZOS, antialiased) to size x size without keeping the aspect
  ratio; `alpha_to_original` maps the prediction back to H x W. A size x size input is not
  resampled.
  """
  rgb = _check_rgb(rgb_uint8)
  size = int(size)
  if size < 1:
    raise ValueError(f"to_model_input: size must be >= 1, got {size}")
  x = _resize_rgb(rgb, size, size).astype(np.float32)
  return x / np.float32(127.5) - np.float32(1.0)


FITS = ("pad", "crop", "stretch")


def fit_tiles(rgb_uint8, size: int, fit: str) -> tuple[np.ndarray, tuple]:
  """uint8 RGB [H, W, 3] -> (tiles uint8 [n, size, size, 3], plan for `unfit_alpha`).

  How a photo of any shape meets the model's square (a square input is resized in every mode):
  - 'pad': scaled (LANCZOS) so that its longer side is `size`, centred and padded to a square by
    replicating its edge pixels; one tile. The mask is cropped back to the picture.
  - 'crop': n = ceil(long / short) squares of the short side, evenly spaced from one end to the
    other (overlapping, symmetric about the centre), each resized to `size`; the tiles' masks are
    resized back and averaged where they overlap.
  - 'stretch': the whole image resized to size x size; the aspect ratio is not kept.
  """
  rgb = _check_rgb(rgb_uint8)
  size, (h, w) = int(size), rgb.shape[:2]
  if fit not in FITS:
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
  if fit == "stretch" or h == w:
    return _resize_rgb(rgb, size, size)[None], ("stretch", h, w, None)
  if fit == "pad":
    long = max(h, w)
    fh, fw = max(1, round(h * size / long)), max(1, round(w * size / long))
    oy, ox = (size - fh) // 2, (size - fw) // 2
    small = _resize_rgb(rgb, fw, fh)
    tile = np.pad(small, ((oy, size - fh - oy), (ox, size - fw - ox), (0, 0)), mode="edge")
    return tile[None], ("pad", h, w, (oy, ox, fh, fw))
  short, long = min(h, w), max(h, w)
  n = -(-long // short)
  starts = [round(k * (long - short) / (n - 1)) for k in range(n)]
  crops = [rgb[o:o + short] if h > w else rgb[:, o:o + short] for o in starts]
  return np.stack([_resize_rgb(np.ascontiguousarray(c), size, size) for c in crops]), (
      "crop", h, w, starts)


def unfit_alpha(tile_alpha, plan: tuple) -> np.ndarray:
  """The tiles' soft masks [n, size, size] -> float32 [H, W] in [0, 1] (`fit_tiles`' plan)."""
  fit, h, w, extra = plan
  tiles = np.asarray(tile_alpha, np.float32)
  if fit == "stretch":
    return _resize_alpha(tiles[0], w, h)
  if fit == "pad":
    oy, ox, fh, fw = extra
    return _resize_alpha(tiles[0, oy:oy + fh, ox:ox + fw], w, h)
  short = min(h, w)
  total, count = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
  for o, t in zip(extra, tiles):
    window = (slice(o, o + short), slice(None)) if h > w else (slice(None), slice(o, o + short))
    total[window] += _resize_alpha(t, short, short)
    count[window] += 1.0
  return np.clip(total / count, 0.0, 1.0)


def as_rgb(image) -> np.ndarray:
  """A picture handed to the Python API -> uint8 RGB [H, W, 3].

  PIL images follow `read_rgb`'s rules (EXIF orientation, transparency over white, 16-bit and float
  modes). NumPy arrays: uint8 [H, W, 3] as is; [H, W] grey replicated; [H, W, 4] RGBA composited
  over white; floating arrays of those shapes are read as values in [0, 1].
  """
  if isinstance(image, Image.Image):
    try:
      oriented = ImageOps.exif_transpose(image)
    except Exception:  # pylint: disable=broad-except  # malformed EXIF: keep stored pixels
      oriented = None
    return _to_rgb_array(oriented if oriented is not None else image)
  a = np.asarray(image)
  if np.issubdtype(a.dtype, np.floating):
    if a.size and not (np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1):
      raise ValueError("a floating-point image must hold finite values in [0, 1]")
    a = np.floor(a * 255.0 + 0.5).astype(np.uint8)
  if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) \
     or 0 in a.shape[:2]:
    raise ValueError(f"expected a PIL image or an array [H, W], [H, W, 3] or [H, W, 4] (uint8, or "
                     f"float in [0, 1]); got {a.dtype} {a.shape}")
  if a.ndim == 2:
    return np.repeat(a[..., None], 3, axis=-1)
  return _composite_over_white(a) if a.shape[-1] == 4 else a


def _alpha_2d(alpha) -> np.ndarray:
  a = np.asarray(alpha, np.float32)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2:
    raise ValueError(f"expected an alpha map [H, W] or [H, W, 1], got shape {a.shape}")
  return a


def alpha_to_original(alpha, hw: tuple[int, int]) -> np.ndarray:
  """Soft mask [size, size] (or [size, size, 1]) -> float32 [h, w] in [0, 1], bilinear."""
  h, w = (int(v) for v in hw)
  if h < 1 or w < 1:
    raise ValueError(f"alpha_to_original: bad target size {hw}")
  return _resize_alpha(_alpha_2d(alpha), w, h)


def resize_image(x, hw: tuple[int, int]) -> np.ndarray:
  """Float image [S, S', 3] (any range, e.g. G's [-1, 1]) -> float32 [h, w, 3], each channel
  resized with LANCZOS (as `to_model_input` resizes photos the other way); the same size is
  returned unchanged."""
  a = np.asarray(x, np.float32)
  h, w = (int(v) for v in hw)
  if a.shape[:2] == (h, w):
    return a
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F")
                              .resize((w, h), Image.LANCZOS)) for c in range(a.shape[-1])], -1)


def _png_image(array: np.ndarray, mode: str) -> Image.Image:
  img = Image.fromarray(np.ascontiguousarray(array, np.uint8))
  if img.mode != mode:
    raise ValueError(f"PNG of array {array.shape} gives mode {img.mode}, expected {mode}")
  return img


def _save_png(path: str, array: np.ndarray, mode: str) -> None:
  """Atomic PNG of a uint8 [H, W] (L), [H, W, 3] (RGB) or [H, W, 4] (RGBA) array."""
  img = _png_image(array, mode)
  atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def png_bytes(array: np.ndarray, mode: str) -> bytes:
  """The PNG file of a uint8 array, as `_save_png` writes it (e.g. an HTTP answer)."""
  buf = io.BytesIO()
  _png_image(array, mode).save(buf, format="PNG")
  return buf.getvalue()


OUTPUT_KINDS = ("mask", "alpha", "cutout")
OUTPUT_DIRS = {"mask": "masks", "alpha": "alpha", "cutout": "cutout"}


def composite(rgb_uint8, alpha_hw, bgcolor) -> np.ndarray:
  """uint8 RGB: alpha * image + (1 - alpha) * bgcolor (an (R, G, B) of 0..255), rounded."""
  a = np.clip(_alpha_2d(alpha_hw), 0.0, 1.0)[..., None]
  bg = np.asarray(bgcolor, np.float32).reshape(1, 1, 3)
  out = a * np.asarray(rgb_uint8, np.float32) + (1.0 - a) * bg
  return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)


def output_picture(kind: str, rgb_uint8, alpha_hw, threshold: float = masks.HARD_MASK_THRESHOLD,
                   bgcolor=None) -> tuple[np.ndarray, str]:
  """(uint8 array, PNG mode) of one output kind of one input (`write_segmentation` lists them)."""
  rgb = _check_rgb(rgb_uint8)
  alpha = np.clip(_alpha_2d(alpha_hw), 0.0, 1.0)
  if alpha.shape != rgb.shape[:2]:
    raise ValueError(f"output_picture: alpha {alpha.shape} does not match image "
                     f"{rgb.shape[:2]}; map it back with unfit_alpha first")
  if kind == "mask":
    return np.where(masks.hard_mask(alpha, threshold), 255, 0).astype(np.uint8), "L"
  soft = np.floor(alpha * 255.0 + 0.5).astype(np.uint8)
  if kind == "alpha":
    return soft, "L"
  if kind != "cutout":
    raise ValueError(f"output_picture: unknown kind {kind!r}, expected one of {OUTPUT_KINDS}")
  if bgcolor is None:
    return np.concatenate([rgb, soft[..., None]], axis=-1), "RGBA"
  return composite(rgb, alpha, bgcolor), "RGB"


def write_segmentation(out_dir, stem: str, rgb_uint8, alpha_hw,
                       threshold: float = masks.HARD_MASK_THRESHOLD,
                       outputs=OUTPUT_KINDS, bgcolor=None) -> dict:
  """Writes the chosen outputs of one input, each atomically, at the input's own size.

  - `<out_dir>/masks/<stem>.png` ('mask'): hard mask, L, 255 where `masks.hard_mask(alpha,
    threshold)`.
  - `<out_dir>/alpha/<stem>.png` ('alpha'): soft mask, L, round(alpha * 255).
  - `<out_dir>/cutout/<stem>.png` ('cutout'): RGBA, the input's RGB with alpha = the soft mask;
    with `bgcolor` (R, G, B), RGB: the input composited over that colour (`composite`).

  Args:
    out_dir: output folder (created).
    stem: output name without extension (see `output_stems`); no path separators.
    rgb_uint8: the input, uint8 [H, W, 3].
    alpha_hw: float alpha in [0, 1], [H, W] (already at the input's size, `unfit_alpha`).
    threshold: foreground where alpha > threshold (`method.masks`).
    outputs: which of 'mask', 'alpha', 'cutout' to write.
    bgcolor: None or (R, G, B) in 0..255 for the cut-out.
  Returns:
    {kind: path} of the files written.
  """
  stem = str(stem)
  if not stem or stem in (".", "..") or "/" in stem or os.sep in stem:
    raise ValueError(f"write_segmentation: bad stem {stem!r} (a file name without folders)")
  paths = {}
  for kind in outputs:
    paths[kind] = os.path.join(os.fspath(out_dir), OUTPUT_DIRS[kind], f"{stem}.png")
    _save_png(paths[kind], *output_picture(kind, rgb_uint8, alpha_hw, threshold, bgcolor))
  return paths


# ----------------------------------------------------------------------------- contact sheet


def _checkerboard(h: int, w: int) -> np.ndarray:
  yy, xx = np.meshgrid(np.arange(h) // _CHECKER_SQUARE, np.arange(w) // _CHECKER_SQUARE,
                       indexing="ij")
  grey = np.where((yy + xx) % 2 == 0, _CHECKER[0], _CHECKER[1]).astype(np.float32)
  return np.repeat(grey[..., None], 3, axis=-1)


def _letterbox(picture: np.ndarray, cell: int) -> np.ndarray:
  """uint8 [h, w, 3] (h, w <= cell) centred on a cell x cell square of grey _LETTERBOX."""
  out = np.full((cell, cell, 3), _LETTERBOX, np.uint8)
  h, w = picture.shape[:2]
  y, x = (cell - h) // 2, (cell - w) // 2
  out[y:y + h, x:x + w] = picture
  return out


def thumbnail(rgb_uint8, bool_masks=(), cell: int = 128) -> tuple:
  """(picture, *masks) at a common size: scaled so that the longer side is `cell` (LANCZOS; the
  bool masks [H, W] by nearest neighbour) and letterboxed to cell x cell (grey; masks False)."""
  rgb = _check_rgb(rgb_uint8)
  h, w = rgb.shape[:2]
  scale = cell / max(h, w)
  fh, fw = max(1, round(h * scale)), max(1, round(w * scale))
  y, x = (cell - fh) // 2, (cell - fw) // 2
  out = [_letterbox(_resize_rgb(rgb, fw, fh), cell)]
  for m in bool_masks:
    small = np.asarray(Image.fromarray(np.asarray(m, np.uint8) * np.uint8(255)).resize(
        (fw, fh), Image.NEAREST)) > 127
    box = np.zeros((cell, cell), bool)
    box[y:y + fh, x:x + fw] = small
    out.append(box)
  return tuple(out)


SHEET_COLUMNS = ("image", "mask", "matte", "cut-out")
_LABEL_WIDTH = 160   # pixels of the file-name column of a contact sheet
_TITLE_HEIGHT = 20


def contact_sheet_cells(rgb_uint8, alpha_hw, threshold: float = masks.HARD_MASK_THRESHOLD,
                        cell: int = 128) -> tuple[np.ndarray, ...]:
  """(image, hard mask, soft mask (matte), cut-out over a checkerboard) of one input, each uint8
  [cell, cell, 3]. The picture is scaled (aspect kept) so that its longer side is `cell`, then
  letterboxed on grey; the mask is `masks.hard_mask` of the full-size alpha, scaled down."""
  rgb = _check_rgb(rgb_uint8)
  alpha = _alpha_2d(alpha_hw)
  h, w = rgb.shape[:2]
  scale = cell / max(h, w)
  fh, fw = max(1, round(h * scale)), max(1, round(w * scale))
  small = _resize_rgb(rgb, fw, fh)
  a = _resize_alpha(alpha, fw, fh)
  hard = np.where(masks.hard_mask(alpha, threshold), 255, 0).astype(np.uint8)
  hard = np.asarray(Image.fromarray(hard).resize((fw, fh), Image.NEAREST))
  grey = lambda v: np.repeat(v[..., None], 3, axis=-1)
  soft = grey(np.floor(a * 255.0 + 0.5).astype(np.uint8))
  cut = a[..., None] * small.astype(np.float32) + (1.0 - a[..., None]) * _checkerboard(fh, fw)
  cut = np.floor(cut + 0.5).clip(0, 255).astype(np.uint8)
  return tuple(_letterbox(p, cell) for p in (small, grey(hard), soft, cut))


def _text_panel(text: str, width: int, height: int) -> np.ndarray:
  """uint8 [height, width, 3]: `text` in black on white, wrapped by characters, '...' if cut."""
  from PIL import ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  img = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default(size=12)
  lines, line = [], ""
  for ch in text:
    if draw.textlength(line + ch, font=font) > width - 8:
      lines.append(line)
      line = ""
    line += ch
  lines.append(line)
  fit = max(1, (height - 4) // 15)
  if len(lines) > fit:
    lines = lines[:fit]
    lines[-1] = lines[-1][:-3] + "..."
  for i, t in enumerate(lines):
    draw.text((4, 2 + 15 * i), t, fill=(0, 0, 0), font=font)
  return np.asarray(img)


def contact_sheet(rows, labels=None, cell: int = 128, max_items: int = 64,
                  threshold: float = masks.HARD_MASK_THRESHOLD, pad: int = 2) -> np.ndarray:
  """Overview picture of segmented inputs, one labelled row per input.

  Args:
    rows: list of (rgb uint8 [H, W, 3], alpha float [H, W]) pairs, any sizes, or of the four
      cells `contact_sheet_cells` made of them (what a long run keeps instead of its inputs).
    labels: one name per row (e.g. the input's file name), shown in a first column.
    cell: side of each square cell (pictures keep their aspect, letterboxed on grey).
    max_items: only the first max_items inputs are drawn.
    threshold: hard-mask threshold of the pairs' mask column.
  Returns:
    uint8 [H', W', 3]: a title row (file, image, mask, matte, cut-out), then per input its name,
    the picture, its hard mask, its soft mask and its cut-out over a checkerboard; white padding.
  """
  cell = int(cell)
  if cell < 8:
    raise ValueError(f"contact_sheet: cell must be >= 8, got {cell}")
  items = list(rows)[:max(int(max_items), 0)]
  if not items:
    raise ValueError("contact_sheet: nothing to draw")
  labels = list(labels or [""] * len(items))[:len(items)]
  cells = [item if len(item) == 4 else contact_sheet_cells(item[0], item[1], threshold, cell)
           for item in items]
  widths = [_LABEL_WIDTH] + [cell] * len(SHEET_COLUMNS)
  xs = np.cumsum([pad] + [w + pad for w in widths])
  out = np.full((pad + _TITLE_HEIGHT + len(cells) * (cell + pad) + pad, int(xs[-1]), 3), 255,
                np.uint8)
  for x, w, title in zip(xs, widths, ("file",) + SHEET_COLUMNS):
    out[pad:pad + _TITLE_HEIGHT, x:x + w] = _text_panel(title, w, _TITLE_HEIGHT)
  for i, (label, row) in enumerate(zip(labels, cells)):
    y = 2 * pad + _TITLE_HEIGHT + i * (cell + pad)
    for x, w, picture in zip(xs, widths, (_text_panel(str(label), _LABEL_WIDTH, cell),) + row):
      out[y:y + cell, x:x + w] = picture
  return out


def save_contact_sheet(path, rows, labels=None, cell: int = 128, max_items: int = 64,
                       threshold: float = masks.HARD_MASK_THRESHOLD) -> np.ndarray:
  """`contact_sheet` written atomically as a PNG; returns the picture."""
  sheet = contact_sheet(rows, labels, cell=cell, max_items=max_items, threshold=threshold)
  _save_png(os.fspath(path), sheet, "RGB")
  return sheet
