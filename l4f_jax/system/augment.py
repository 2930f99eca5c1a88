"""Host-side NumPy augmentations of (image, alpha) batches for the student segmenter.

The student learns from generated images but must run on real photos; these augmentations bridge
the gap (framing, colour balance, focus, sensor noise and compression differ between the generator's
outputs and photos). A batch is a dict {'image': uint8 [B, H, W, 3] or float [-1, 1], 'alpha':
float [0, 1] [B, H, W, 1], ...}:

  batch = augment_batch(batch, AugmentConfig(crop_scale=0.5, color_jitter=0.3), seed=0, step=s)

Order and semantics (each op per image, off at its default unless noted):
  1. flip (default on): horizontal flip with probability 1/2.
  2. crop_scale > 0: random resized crop, area fraction U(crop_scale, 1), aspect ratio log-uniform
     in [3/4, 4/3], uniform position, resampled back to H x W (bilinear, half-pixel centres).
     Flip and crop are one resampling, applied identically to image and alpha.
  3. color_jitter = c > 0: brightness factor, contrast factor (about the image's mean grey) and
     saturation factor (about each pixel's grey), each U(1 - c, 1 + c); clipped to [0, 1].
  4. blur = s > 0: Gaussian blur with sigma U(0, s) pixels (separable, reflect padding).
  5. noise = n > 0: additive Gaussian noise with std U(0, n) in units of the [0, 1] intensity range.
  6. jpeg_quality = q > 0: with probability jpeg_prob, a JPEG round-trip (PIL, in memory) at a
     quality drawn uniformly from [q, 95].
Steps 3-6 change the image only; alpha changes only through 1-2. Other batch entries pass through
unchanged (derive hard masks from the augmented alpha). The image comes back in its input
representation (uint8, or float in [-1, 1]); alpha as float32. With everything off the batch is
returned unchanged.

Determinism: row i of the batch draws from
`np.random.default_rng([seed, tag, step, first_row + i])`, so the augmentation of a row depends
only on (seed, step, its global row index): a resumed run sees the same batches, and hosts that
each augment their own rows of a global batch (first_row = the host's offset) produce exactly the
single-host batch.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from l4f_jax.config import option

AUG_TAG = 2  # l4f_jax.system.data uses tags 0 (permutation) and 1 (flips)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert('L')


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Switches and strengths of the augmentations (module docstring); defaults = flips only."""
  flip: bool = option(True, "Random horizontal flips.")
  crop_scale: float = option(0.0, "Random resized crop: minimum area fraction (0 = off).", ge=0,
                             le=1)
  color_jitter: float = option(0.0, "Brightness / contrast / saturation jitter strength (0 = off).",
                               ge=0)
  blur: float = option(0.0, "Maximum Gaussian blur sigma in pixels (0 = off).", ge=0)
  jpeg_quality: int = option(0, "JPEG re-encoding at quality U[q, 95] (0 = off).", ge=0, le=95)
  jpeg_prob: float = option(0.5, "Probability of the JPEG re-encoding.", ge=0, le=1)
  noise: float = option(0.0, "Maximum std of additive Gaussian pixel noise (0 = off).", ge=0)

  @property
  def geometric(self) -> bool:
    return self.flip or self.crop_scale > 0

  @property
  def photometric(self) -> bool:
    return self.color_jitter > 0 or self.blur > 0 or self.noise > 0 or self.jpeg_quality > 0


def _draw(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int) -> dict:
  """One row's random parameters, always drawn in the same order (independent of which ops are on,
  so switching one op does not reshuffle the others' draws)."""
  u = rng.random(12)
  d = dict(flip=cfg.flip and u[0] < 0.5)
  # Random resized crop: box (y0, x0, ch, cw) in source pixels.
  if cfg.crop_scale > 0:
    area = cfg.crop_scale + (1 - cfg.crop_scale) * u[1]
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[2])  # w / h
    cw, ch = min(w, w * math.sqrt(area * ratio)), min(h, h * math.sqrt(area / ratio))
    d["box"] = ((h - ch) * u[3], (w - cw) * u[4], ch, cw)
  else:
    d["box"] = (0.0, 0.0, float(h), float(w))
  c = cfg.color_jitter
  d["jitter"] = tuple(1 - c + 2 * c * u[k] for k in (5, 6, 7))  # brightness, contrast, saturation
  d["sigma"] = cfg.blur * u[8]
  d["noise"] = cfg.noise * u[9]
  d["jpeg"] = (int(cfg.jpeg_quality + math.floor(u[11] * (96 - cfg.jpeg_quality)))
               if cfg.jpeg_quality and u[10] < cfg.jpeg_prob else 0)
  d["noise_seed"] = rng.integers(2 ** 63)
  return d


def _coords(start: np.ndarray, size: np.ndarray, n_out: int, n_in: int, flip=None):
  """Bilinear taps along one axis: (i0, i1, f) [B, n_out], source = start + (j + 0.5) size / n_out
  - 0.5 (half-pixel centres), clamped to the border; `flip` [B] reverses the output order."""
  j = np.arange(n_out, dtype=np.float64)
  if flip is not None:
    j = np.where(flip[:, None], n_out - 1 - j, j)
  src = start[:, None] + (j + 0.5) * (size[:, None] / n_out) - 0.5
  src = np.clip(src, 0, n_in - 1)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def _resample(x: np.ndarray, ys, xs) -> np.ndarray:
  """Separable bilinear resampling of float x [B, H, W, C] with per-row taps from `_coords` (a loop
  over rows of two contiguous gathers each: faster in NumPy than batched fancy indexing)."""
  (y0, y1, fy), (x0, x1, fx) = ys, xs
  out = np.empty(x.shape[:1] + (y0.shape[1], x0.shape[1]) + x.shape[3:], np.float32)
  for b in range(len(x)):
    wy, wx = fy[b][:, None, None], fx[b][None, :, None]
    t = x[b, y0[b]] * (1 - wy) + x[b, y1[b]] * wy
    out[b] = t[:, x0[b]] * (1 - wx) + t[:, x1[b]] * wx
  return out


def _gaussian_blur(x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
  """Per-row Gaussian blur of float x [B, H, W, C] (sigma 0 = identity), reflect padding."""
  r = int(math.ceil(3 * float(sigmas.max())))
  if r == 0:
    return x
  k = np.arange(-r, r + 1, dtype=np.float64)
  s = np.maximum(sigmas, 1e-6)[:, None]
  taps = np.exp(-0.5 * (k / s) ** 2)
  taps = (taps / taps.sum(1, keepdims=True)).astype(np.float32)  # [B, 2r + 1]
  for axis in (1, 2):
    n = x.shape[axis]
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect" if n > r else "edge")
    out = np.zeros_like(x)
    for t in range(2 * r + 1):
      window = [slice(None)] * 4
      window[axis] = slice(t, t + n)
      out += taps[:, t].reshape(-1, 1, 1, 1) * xp[tuple(window)]
    x = out
  return x


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
  """JPEG round-trip (PIL, 4:2:0, in memory) of one float [H, W, 3] image in [0, 1]."""
  buf = io.BytesIO()
  Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
  buf.seek(0)
  with Image.open(buf) as img:
    return np.asarray(img.convert("RGB"), np.float32) / 255


def _grey(x: np.ndarray) -> np.ndarray:
  """Luma [B, H, W, 1] of RGB x [B, H, W, 3]."""
  return (_LUMA[0] * x[..., 0] + _LUMA[1] * x[..., 1] + _LUMA[2] * x[..., 2])[..., None]


def _photometric(x: np.ndarray, cfg: AugmentConfig, rows: list) -> np.ndarray:
  """Steps 3-6 on float x [B, H, W, 3] in [0, 1], a fresh array that is modified in place."""
  if cfg.color_jitter > 0:
    bri, con, sat = (np.array([r["jitter"][k] for r in rows], np.float32).reshape(-1, 1, 1, 1)
                     for k in range(3))
    x *= bri
    np.clip(x, 0, 1, out=x)
    for k, factor in enumerate((con, sat)):
      # contrast about the image's mean grey, then saturation about each pixel's grey
      centre = _grey(x).mean((1, 2), keepdims=True) if k == 0 else _grey(x)
      x -= centre
      x *= factor
      x += centre
      np.clip(x, 0, 1, out=x)
  if cfg.blur > 0:
    x = _gaussian_blur(x, np.array([r["sigma"] for r in rows]))
  if cfg.noise > 0:
    for i, r in enumerate(rows):
      if r["noise"] > 0:
        x[i] += r["noise"] * np.random.default_rng(r["noise_seed"]).standard_normal(
            x.shape[1:], np.float32)
    np.clip(x, 0, 1, out=x)
  if cfg.jpeg_quality > 0:
    for i, r in enumerate(rows):
      if r["jpeg"]:
        x[i] = _jpeg(np.clip(x[i], 0, 1), r["jpeg"])
  return x


def augment_batch(batch: dict, cfg: AugmentConfig, *, seed: int, step: int, tag: int = AUG_TAG,
                  first_row: int = 0) -> dict:
  """The augmented copy of `batch` (see module docstring); the input arrays are not modified."""
  out = dict(batch)
  if not (cfg.geometric or cfg.photometric):
    return out
  image, alpha = np.asarray(batch["image"]), np.asarray(batch["alpha"], np.float32)
  b, h, w, _ = image.shape
  if alpha.shape[:3] != (b, h, w):
    raise ValueError(f"image {image.shape} and alpha {alpha.shape} do not match")
  is_uint8 = image.dtype == np.uint8
  rows = [_draw(np.random.default_rng([seed, tag, step, first_row + i]), cfg, h, w)
          for i in range(b)]
  x = image.astype(np.float32)  # geometric ops are linear: they run in the input's units

  flips = np.array([r["flip"] for r in rows], bool)
  if cfg.crop_scale == 0:  # flips alone: exact, by reversing columns
    x[flips], alpha = x[flips, :, ::-1], alpha.copy()
    alpha[flips] = alpha[flips, :, ::-1]
  else:
    boxes = np.array([r["box"] for r in rows], np.float64)
    ys = _coords(boxes[:, 0], boxes[:, 2], h, h)
    xs = _coords(boxes[:, 1], boxes[:, 3], w, w, flip=flips)
    x, alpha = _resample(x, ys, xs), _resample(alpha, ys, xs)

  if cfg.photometric:
    x = _photometric(x / 255 if is_uint8 else (x + 1) / 2, cfg, rows)
    x = x * 255 if is_uint8 else x * 2 - 1
  out["image"] = (np.round(np.clip(x, 0, 255)).astype(np.uint8) if is_uint8
                  else x.astype(image.dtype))
  out["alpha"] = alpha
  return out
