"""l4f_shapes: a procedural foreground/background dataset with exact masks.

Each example is one smooth foreground object (ellipse, rounded rectangle or wavy blob; random
position, scale, aspect, rotation, hue and shading) composited over an independent background
(linear gradient, soft stripes, soft blobs or smooth noise, plus a luminance vignette and grain).
Edges are anti-aliased by 4x4 supersampling (near the boundary only); the stored mask is the
object's coverage >= 0.5.
The object covers 15-50% of the image and at most ~10% of its extent leaves the frame.

Colour rule (`oracle_mask`), on RGB in [0, 1] with chroma C = max - min and the hexagonal HSV hue H:

    foreground  <=>  C >= 0.25  and  H in [290 deg, 360) or [0, 60 deg]   (red/orange/magenta)

- Objects use hues in [320, 35] deg with chroma (S * V * shading) >= 0.42, so they always pass.
- Backgrounds mix colours that are either near-neutral (chroma <= 0.10, any hue) or cool
  (hue in [110, 230] deg, any chroma). Convex mixes of these stay outside the rule with a margin:
  a warm hue can only come from the neutral part, whose chroma is too small. Vignette and grain act
  on luminance only (equal change in R, G, B), so they never raise chroma.
- Only anti-aliased edge pixels (foreground mixed with background) can disagree with the true mask;
  agreement on generated data is measured in tests/test_data.py (>= 0.99 required).

The rule applies to any image, including GAN samples (float in [-1, 1]).
"""
from __future__ import annotations

import dataclasses
import io
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from l4f_jax.datasets.build import build

_SUPERSAMPLE = 4
_LIPSCHITZ = 4.0               # bound on |grad| of the shape implicits (blob: sqrt(1 + 3.5^2))
_FG_HUE = (-40.0, 35.0)          # degrees, i.e. 320 .. 35
_FG_SAT = (0.8, 1.0)
_FG_VAL = (0.75, 1.0)
_FG_SHADE_MIN = 0.7
_COOL_HUE = (110.0, 230.0)
_NEUTRAL_CHROMA = 0.10
_COVERAGE = (0.15, 0.5)
_ORACLE_CHROMA = 0.25
_ORACLE_HUE = (290.0, 60.0)      # wraps through 0


# ----------------------------------------------------------------------------- colour helpers


def _hsv_to_rgb(h, s, v):
  """Vectorised HSV -> RGB; h in degrees (any range), s, v in [0, 1]; returns float32 [..., 3]."""
  h, s, v = (np.asarray(a, np.float32)[..., None] for a in (h, s, v))
  k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h / np.float32(60.0), np.float32(6.0))
  return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _hue_chroma(rgb):
  """Hexagonal hue in degrees [0, 360) and chroma of RGB in [0, 1] ([..., 3] -> two [...])."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  mx = np.max(rgb, axis=-1)
  c = mx - np.min(rgb, axis=-1)
  safe = np.where(c > 0, c, 1.0)
  h = np.where(mx == r, np.mod((g - b) / safe, 6.0),
               np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  return np.where(c > 0, h * 60.0, 0.0), c


def oracle_mask(images) -> np.ndarray:
  """Foreground by the colour rule (module docstring).

  Args:
    images: uint8 [..., H, W, 3] in [0, 255], or float [..., H, W, 3] in [-1, 1] (clipped).
  Returns:
    bool [..., H, W].
  """
  x = np.asarray(images)
  if x.shape[-1] != 3:
    raise ValueError(f"oracle_mask: expected [..., H, W, 3] RGB images, got shape {x.shape}")
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  else:
    x = (np.clip(x.astype(np.float32), -1.0, 1.0) + 1.0) * 0.5
  hue, chroma = _hue_chroma(x)
  warm = (hue >= _ORACLE_HUE[0]) | (hue <= _ORACLE_HUE[1])
  return (chroma >= _ORACLE_CHROMA) & warm


# ----------------------------------------------------------------------------- rendering


def _grid(n):
  """Pixel-centre coordinates in [-1, 1]: (y, x), each [n, n]."""
  t = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
  return np.meshgrid(t, t, indexing="ij")


def _smooth_field(rng, size, cells):
  """Smooth random field in [0, 1]: a cells x cells grid resized bicubically to size x size."""
  small = rng.random((cells, cells)).astype(np.float32)
  field = np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))
  lo, hi = field.min(), field.max()
  return (field - lo) / max(hi - lo, 1e-6)


def _bg_colour(rng):
  """One background colour: near-neutral (any hue) or cool (any chroma)."""
  if rng.random() < 0.5:
    v = rng.uniform(0.15, 0.95)
    s = rng.uniform(0.0, min(1.0, _NEUTRAL_CHROMA / v))
    h = rng.uniform(0.0, 360.0)
  else:
    v = rng.uniform(0.3, 0.95)
    s = rng.uniform(0.2, 0.9)
    h = rng.uniform(*_COOL_HUE)
  return _hsv_to_rgb(np.float32(h), np.float32(s), np.float32(v))


def _background(rng, size):
  """Background RGB [size, size, 3] in [0, 1]."""
  y, x = _grid(size)
  kind = rng.integers(4)
  if kind == 0:    # linear gradient between two colours
    a = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + 0.6 * (x * np.cos(a) + y * np.sin(a)), 0, 1)
    weights = [t, 1 - t]
  elif kind == 1:  # soft stripes
    a = rng.uniform(0, np.pi)
    freq = rng.uniform(1.0, 3.5)
    t = 0.5 + 0.5 * np.tanh(rng.uniform(1.0, 4.0) * np.sin(
        np.pi * freq * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi)))
    weights = [t, 1 - t]
  elif kind == 2:  # soft blobs over a base colour
    k = int(rng.integers(2, 5))
    ws = []
    for _ in range(k):
      cy, cx = rng.uniform(-1, 1, 2)
      r = rng.uniform(0.2, 0.6)
      ws.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))
    ws = np.stack(ws)
    base = np.clip(1 - ws.sum(0), 0, 1)
    total = ws.sum(0) + base
    weights = [base / total] + [w / total for w in ws]
  else:            # smooth noise mix of three colours
    f1 = _smooth_field(rng, size, int(rng.integers(3, 7)))
    f2 = _smooth_field(rng, size, int(rng.integers(3, 7)))
    weights = [f1 * f2, f1 * (1 - f2), 1 - f1]
  colours = [_bg_colour(rng) for _ in weights]
  bg = sum(w[..., None] * c for w, c in zip(weights, colours))
  # Multiplicative vignette / luminance ramp (scales chroma down or by <= 10%).
  a = rng.uniform(0, 2 * np.pi)
  lum = 1.0 + rng.uniform(-0.1, 0.1) * (x * np.cos(a) + y * np.sin(a))
  lum -= rng.uniform(0.0, 0.25) * (x * x + y * y) / 2
  return np.clip(bg * lum[..., None], 0, 1).astype(np.float32)


def _blob_radius(params, c, s):
  """Blob boundary radius 1 + sum_k a_k cos(k theta + phi_k) (normalised to max 1), from cos/sin."""
  amps, phases = params
  r = np.ones_like(c)
  ck, sk = c, s
  for k in range(2, 5):
    ck, sk = ck * c - sk * s, sk * c + ck * s  # cos/sin of k theta
    a, ph = amps[k - 2], phases[k - 2]
    r = r + a * (ck * np.cos(ph) - sk * np.sin(ph))
  return r / (1.0 + np.sum(amps))


def _implicit(family, params, u, v):
  """Implicit function of the unit shape at local coordinates (u, v): <= 0 inside.

  Each is Lipschitz (w.r.t. local coordinates) with constant <= _LIPSCHITZ.
  """
  if family == 0:  # ellipse (a circle before the aspect scaling)
    return np.sqrt(u * u + v * v) - 1.0
  if family == 1:  # superellipse (|u|^p + |v|^p)^(1/p) <= 1, a rounded rectangle
    return (np.abs(u) ** params + np.abs(v) ** params) ** (1.0 / params) - 1.0
  rho = np.sqrt(u * u + v * v)
  safe = np.maximum(rho, 1e-6)
  return rho - _blob_radius(params, u / safe, v / safe)


def _unit_radius(family, params, theta):
  """Boundary radius of the unit shape at angles theta."""
  c, s = np.cos(theta), np.sin(theta)
  if family == 0:
    return np.ones_like(theta)
  if family == 1:
    return (np.abs(c) ** params + np.abs(s) ** params) ** (-1.0 / params)
  return _blob_radius(params, c, s)


def _shape_coverage(rng, size):
  """Samples one object; returns coverage [size, size] in [0, 1] and local coordinates u, v.

  Coverage is the inside fraction of 4x4 sub-pixel samples; only pixels near the boundary are
  supersampled (elsewhere all samples agree, bounded by the Lipschitz constant of the implicit).
  """
  k = _SUPERSAMPLE
  y, x = _grid(size)
  off = ((np.arange(k, dtype=np.float32) + 0.5) / k - 0.5) * (2.0 / size)
  oy, ox = [a.reshape(-1) for a in np.meshgrid(off, off, indexing="ij")]
  theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
  for _ in range(100):
    family = int(rng.integers(3))
    if family == 0:
      params = None
    elif family == 1:
      params = rng.uniform(2.5, 6.0)
    else:
      params = (rng.uniform(0.0, 0.15, 3), rng.uniform(0, 2 * np.pi, 3))
    r_unit = _unit_radius(family, params, theta)
    unit_area = np.pi * np.mean(r_unit ** 2)
    target = rng.uniform(*_COVERAGE) * 4.0              # image area is 4 in [-1, 1]^2
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    scale = np.sqrt(target / unit_area)
    sx, sy = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    rot = rng.uniform(0, np.pi)
    bx, by = r_unit * np.cos(theta) * sx, r_unit * np.sin(theta) * sy
    ex = np.max(np.abs(bx * np.cos(rot) - by * np.sin(rot)))
    ey = np.max(np.abs(bx * np.sin(rot) + by * np.cos(rot)))
    if max(ex, ey) > 0.97:
      continue
    cx = rng.uniform(-1 + 0.9 * ex, 1 - 0.9 * ex)
    cy = rng.uniform(-1 + 0.9 * ey, 1 - 0.9 * ey)
    cr, sr = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    to_u = lambda px, py: ((px - np.float32(cx)) * cr + (py - np.float32(cy)) * sr) / np.float32(sx)
    to_v = lambda px, py: ((py - np.float32(cy)) * cr - (px - np.float32(cx)) * sr) / np.float32(sy)
    u, v = to_u(x, y), to_v(x, y)
    g = _implicit(family, params, u, v)
    cov = (g <= 0).astype(np.float32)
    # Local-unit distance to the boundary >= |g| / L; a pixel's samples lie within
    # sqrt(2) / size (image units), i.e. within sqrt(2) / (size * min(sx, sy)) local units.
    band = np.abs(g) <= _LIPSCHITZ * 1.5 / (size * min(sx, sy))
    iy, ix = np.nonzero(band)
    px = x[iy, ix][:, None] + ox[None]
    py = y[iy, ix][:, None] + oy[None]
    cov[iy, ix] = np.mean(_implicit(family, params, to_u(px, py), to_v(px, py)) <= 0, axis=1)
    frac = float(np.mean(cov >= 0.5))
    if _COVERAGE[0] <= frac <= _COVERAGE[1]:
      return cov, u, v
  raise RuntimeError("l4f_shapes: could not place an object after 100 tries")


def _foreground(rng, u, v):
  """Object colour [size, size, 3]: warm hue varying across the object, directional shading."""
  h0 = rng.uniform(*_FG_HUE)
  a = rng.uniform(0, 2 * np.pi)
  hue = h0 + rng.uniform(-12, 12) * np.clip(u * np.cos(a) + v * np.sin(a), -1, 1)
  hue = np.clip(hue, *_FG_HUE)
  b = rng.uniform(0, 2 * np.pi)
  lit = np.clip(0.5 + 0.5 * (u * np.cos(b) + v * np.sin(b)), 0, 1)
  dome = np.clip(1 - (u * u + v * v), 0, 1)
  shade = _FG_SHADE_MIN + (1 - _FG_SHADE_MIN) * np.clip(0.6 * lit + 0.4 * dome, 0, 1)
  s = rng.uniform(*_FG_SAT)
  val = rng.uniform(*_FG_VAL) * shade
  return _hsv_to_rgb(hue, np.full_like(hue, s), val).astype(np.float32)


def render_example(seed_or_rng, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Renders one example (pure numpy, deterministic in the seed).

  Args:
    seed_or_rng: an int, a sequence of ints, a `np.random.SeedSequence` or a `np.random.Generator`.
    size: image side in pixels.
  Returns:
    (image uint8 [size, size, 3], mask bool [size, size]).
  """
  image, mask, _ = render_layers(seed_or_rng, size)
  return image, mask


def _quantize(x) -> np.ndarray:
  return np.floor(np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_layers(seed_or_rng, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`render_example` with the clean background: (image, mask, background uint8 [size, size, 3]).

  The renderer draws the background first, then the object over it, then one sensor grain field
  over the whole picture; `background` is the same picture without the object (background +
  the same grain), so it equals `image` wherever the object's coverage is 0.
  """
  rng = np.random.default_rng(seed_or_rng)
  bg = _background(rng, size)
  cov, u, v = _shape_coverage(rng, size)
  fg = _foreground(rng, u, v)
  img = cov[..., None] * fg + (1 - cov[..., None]) * bg
  grain = rng.uniform(0.0, 0.012) * rng.standard_normal((size, size, 1)).astype(np.float32)
  return _quantize(img + grain), cov >= 0.5, _quantize(bg + grain)


# ----------------------------------------------------------------------------- tfds builder


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """resolution: image side (px); num_examples: train split size; seed: dataset seed."""
  resolution: int = 64
  num_examples: int = 4096
  seed: int = 0


def config_name(resolution: int, num_examples: int, seed: int) -> str:
  return f"{resolution}px_n{num_examples}_seed{seed}"


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


class L4fShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Procedural fg/bg dataset; example i is `render_example([seed, i], resolution)`."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ShapesConfig(name=config_name(64, 4096, 0))]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No checksums file; tfds' default lookup imports the absent `importlib_resources`.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedural warm foreground objects over neutral/cool backgrounds, with masks.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3), encoding_format="png"),
            "mask": tfds.features.Image(shape=(r, r, 1), encoding_format="png"),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    cfg = self.builder_config
    for i in range(cfg.num_examples):
      image, mask = render_example([cfg.seed, i], cfg.resolution)
      yield i, {"image": _png(image), "mask": _png(mask.astype(np.uint8) * 255), "id": i}


def prepare_shapes(data_dir, size: int = 64, num_examples: int = 4096, seed: int = 0) -> str:
  """Builds l4f_shapes under data_dir (skipped if already built); returns the builder directory."""
  if size < 16 or num_examples < 1:
    raise ValueError(f"--size={size} --num_examples={num_examples}: l4f_shapes needs size >= 16 "
                     "and at least 1 example")
  cfg = ShapesConfig(name=config_name(size, num_examples, seed), resolution=size,
                     num_examples=num_examples, seed=seed)
  predefined = L4fShapes.builder_configs.get(cfg.name)
  builder = L4fShapes(config=predefined or cfg, data_dir=os.fspath(data_dir),
                      file_format="array_record")
  if not builder.is_prepared():
    logging.info("Building l4f_shapes %s in %s", cfg.name, builder.data_dir)
    build(builder)
  return os.fspath(builder.data_dir)


def ensure_shapes(dataset: str, size: int, num_examples: int, seed: int = 0) -> None:
  """Builds l4f_shapes for a `--dataset=<dir>/l4f_shapes` path that does not exist yet.

  Process 0 builds it (into the parent directory); every process then waits for it, so a multi-host
  job on a shared file system reads one copy.
  """
  import jax  # pylint: disable=import-outside-toplevel
  path = os.fspath(dataset).rstrip("/")
  if os.path.basename(path) != "l4f_shapes":
    raise ValueError(f"--dataset={dataset}: the built-in data is prepared at <dir>/l4f_shapes")
  if jax.process_index() == 0 and not os.path.exists(path):
    prepare_shapes(os.path.dirname(path) or ".", size=size, num_examples=num_examples, seed=seed)
  elif jax.process_index() == 0:
    wanted = config_name(size, num_examples, seed)
    found = sorted(n for n in os.listdir(path) if not n.startswith("."))
    if found and wanted not in found:  # the CLIs' --prepare_shapes builds only a missing dataset
      logging.warning("--dataset=%s already holds l4f_shapes %s, which is used; --prepare_shapes "
                      "asked for %s and is ignored (give a new --dataset to build that)", dataset,
                      ", ".join(found), wanted)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("l4f_shapes_ready")


# ----------------------------------------------------------------------------- held-out test split
#
# The "real" test split stands in for real photos: it is never used to train G, A or a student.
# Example i of the train split is `render_example([seed, i])`, i.e. SeedSequence entropy words
# [seed, i]; held-out example i is `render_example(SeedSequence([seed, i, HELDOUT_STREAM_TAG]))`.
# SeedSequence zero-pads entropy to its 4-word pool, and for entropy of at most 4 words its pool
# (hence the generator state drawn from it) is a bijection of the padded words. Train entropy pads
# to [seed, i, 0, 0] (seed, i < 2**32), held-out entropy to [seed', i', TAG, 0] with TAG != 0, so
# for every train split with seed < 2**32 and < 2**32 examples and every held-out seed < 2**32 the
# two never share a generator (tests/test_image_io.py checks the pools for the default sizes).
#
# Photo effects (on by default, recorded per example in split.json): a quarter of the images are
# JPEG-compressed (quality 60-90, Pillow's default 4:2:0 chroma subsampling) and a quarter are
# Gaussian-blurred (radius 0.4-0.9 px), the rest are clean renders. They act on the image only; the
# mask stays the exact geometric coverage >= 0.5 of the clean render, so scores measure how a model
# copes with camera/compression artefacts that the train split never shows. Effects draw from
# their own child stream (spawn key 0 of the example's SeedSequence), so the clean render of
# example i is the same with or without them.

HELDOUT_STREAM_TAG = 0x7E575E7
HELDOUT_FORMAT = "l4f_shapes_real_test/1"
HELDOUT_MANIFEST = "split.json"
BACKGROUNDS = "backgrounds"

# The validation split: the held-out stream at another seed. Validation example i is
# `render_heldout_example(i, seed=VALIDATION_SEED)`, entropy [1, i, TAG], the test split's is
# [0, i, TAG] (REAL_TEST_SEED, the seed `ensure_real_test_split` and the pipeline use): by the
# bijection above, no validation example shares a generator with a test or a train example
# (tests/test_image_io.py checks the pools at the sizes the runs use). Every choice of a
# threshold, flag value or setting is made on it, never on the test split; a validation split
# with the test split's seed would be the test split, and is refused.
REAL_TEST_SEED = 0
VALIDATION_SEED = 1
_JPEG_FRACTION, _JPEG_QUALITY = 0.25, (60, 90)
_BLUR_FRACTION, _BLUR_RADIUS = 0.25, (0.4, 0.9)
_U32 = 2 ** 32


def heldout_entropy(i: int, seed: int = 0, tag: int = HELDOUT_STREAM_TAG) -> list[int]:
  """SeedSequence entropy words of held-out example i (see the comment above)."""
  return [int(seed), int(i), int(tag)]


def _photo_effect(image: np.ndarray, effect: dict) -> np.ndarray:
  """`effect` (a split.json entry) applied to a uint8 picture."""
  from PIL import ImageFilter  # pylint: disable=import-outside-toplevel
  if effect["kind"] == "jpeg":
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=effect["quality"])
    buf.seek(0)
    with Image.open(buf) as img:
      return np.asarray(img.convert("RGB"))
  if effect["kind"] == "blur":
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(effect["radius"])))
  return image


def render_heldout_example(i: int, size: int = 64, seed: int = 0, photo_effects: bool = True,
                           tag: int = HELDOUT_STREAM_TAG, with_background: bool = False):
  """Held-out example i: (image uint8 [size, size, 3], mask bool [size, size], effect dict), and
  with `with_background` a fourth item, its background uint8 [size, size, 3].

  The effect dict is {'kind': 'none'}, {'kind': 'jpeg', 'quality': q} or {'kind': 'blur',
  'radius': r}; without photo_effects always {'kind': 'none'}. The background is the clean
  background of `render_layers` (the picture without its object) through the same photo effect:
  the photo this camera would have taken of the scene without the object.
  """
  entropy = heldout_entropy(i, seed, tag)
  image, mask, background = render_layers(np.random.SeedSequence(entropy), size)
  effect = {"kind": "none"}
  if photo_effects:
    fx = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(0,)))
    u = fx.random()
    if u < _JPEG_FRACTION:
      effect = {"kind": "jpeg", "quality": int(fx.integers(_JPEG_QUALITY[0],
                                                           _JPEG_QUALITY[1] + 1))}
    elif u < _JPEG_FRACTION + _BLUR_FRACTION:
      effect = {"kind": "blur", "radius": round(float(fx.uniform(*_BLUR_RADIUS)), 3)}
  image = _photo_effect(image, effect)
  if with_background:
    return image, mask, effect, _photo_effect(background, effect)
  return image, mask, effect


# Non-square windows (`render_window_example`, `prepare_data --src=shapes_windows`): a frame of
# side F rendered by the same world from a stream of its own (WINDOW_STREAM_TAG: disjoint from the
# train split and from the held-out test split), with the same photo effects, then cut to a window
# that is the whole frame along one axis and 1.4x to F / (object extent + 4) times narrower along
# the other, placed at random so that it holds the whole object with a 2 px margin. An example
# whose object is too large for such a window in both orientations is skipped. These images are a
# validation set for the fit of photos of other shapes: never train on them.
WINDOW_STREAM_TAG = 0x3A1D0E5
WINDOW_MIN_ASPECT = 1.4


def render_window_example(i: int, frame: int = 128, seed: int = 0, photo_effects: bool = True):
  """Window example i: (image uint8 [h, w, 3], mask bool [h, w], effect dict) with h != w, or
  None when the object cannot be held by a window of aspect >= WINDOW_MIN_ASPECT."""
  image, mask, effect = render_heldout_example(i, frame, seed, photo_effects, WINDOW_STREAM_TAG)
  rng = np.random.default_rng(np.random.SeedSequence(heldout_entropy(i, seed, WINDOW_STREAM_TAG),
                                                     spawn_key=(1,)))
  ys, xs = np.nonzero(mask)
  for wide in rng.permutation([True, False]):
    a0, a1 = (ys.min(), ys.max() + 1) if wide else (xs.min(), xs.max() + 1)
    lo, hi = int(a1 - a0) + 4, int(frame / WINDOW_MIN_ASPECT)
    if lo > hi:
      continue
    side = int(rng.integers(lo, hi + 1))
    first, last = max(0, int(a1) + 2 - side), min(max(int(a0) - 2, 0), frame - side)
    if first > last:
      continue
    start = int(rng.integers(first, last + 1))
    cut = (slice(start, start + side), slice(None)) if wide else (slice(None),
                                                                  slice(start, start + side))
    return np.ascontiguousarray(image[cut]), np.ascontiguousarray(mask[cut]), effect
  return None


def _heldout_params(size: int, n: int, seed: int, photo_effects: bool,
                    windows: bool = False, validation: bool = False) -> dict:
  from l4f_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  what = "validation" if validation else "real test"
  if int(size) < 16 or not 1 <= int(n) < _U32 or not 0 <= int(seed) < _U32:
    raise UserError(f"{what} split size={size} n={n} seed={seed}: needs size >= 16, "
                    f"1 <= n < 2**32 and 0 <= seed < 2**32")
  if validation and int(seed) == REAL_TEST_SEED:
    raise UserError(f"validation split seed={seed} is the real test split's seed: its images "
                    f"would be the test images; pass another seed (default {VALIDATION_SEED})")
  params = {"size": int(size), "n": int(n), "seed": int(seed), "photo_effects": bool(photo_effects)}
  if windows:
    params["windows"] = True
  if validation:
    params["validation"] = True
  return params


def _heldout_status(out_dir: str, params: dict) -> str:
  """'absent', 'empty', 'match', or a reason why out_dir cannot be reused."""
  import json  # pylint: disable=import-outside-toplevel
  if not os.path.exists(out_dir):
    return "absent"
  if not os.path.isdir(out_dir):
    return "is a file, not a folder"
  if not os.listdir(out_dir):
    return "empty"
  try:
    with open(os.path.join(out_dir, HELDOUT_MANIFEST), encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return f"is not a real test split (no readable {HELDOUT_MANIFEST})"
  if manifest.get("format") != HELDOUT_FORMAT:
    return f"holds format {manifest.get('format')!r}, not {HELDOUT_FORMAT!r}"
  if manifest.get("params") != params:
    old = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    diff = ", ".join(f"{k} {old.get(k)!r}" for k in params if old.get(k) != params[k])
    want = ", ".join(f"{k} {params[k]!r}" for k in params if old.get(k) != params[k])
    return f"was built with {diff}, not {want}"
  for i in range(params["n"]):
    for sub in ("images", "masks"):
      if not os.path.isfile(os.path.join(out_dir, sub, f"{i}.png")):
        return f"is incomplete ({sub}/{i}.png is missing)"
  if not params.get("windows") and not all(
      os.path.isfile(os.path.join(out_dir, BACKGROUNDS, f"{i}.png")) for i in range(params["n"])):
    return "backgrounds"  # a split written before backgrounds/ existed: they are added
  return "match"


_BACKGROUNDS_NOTE = ("backgrounds/<i>.png: the picture without its object (render_layers: the "
                     "background the renderer draws first, with the same grain) through the same "
                     "photo effect")


def _write_heldout(tmp: str, params: dict) -> None:
  import json  # pylint: disable=import-outside-toplevel
  windows = params.get("windows")
  subs = ("images", "masks") if windows else ("images", "masks", BACKGROUNDS)
  for sub in subs:
    os.makedirs(os.path.join(tmp, sub))
  effects, sources, i = [], [], 0
  while len(effects) < params["n"]:
    if windows:
      example = render_window_example(i, params["size"], params["seed"], params["photo_effects"])
    else:
      example = render_heldout_example(i, params["size"], params["seed"], params["photo_effects"],
                                       with_background=True)
    i += 1
    if example is None:
      if i > 100 * params["n"]:
        raise RuntimeError("l4f_shapes windows: too few objects fit a non-square window")
      continue
    image, mask, effect = example[:3]
    k = len(effects)
    Image.fromarray(image).save(os.path.join(tmp, "images", f"{k}.png"), format="PNG")
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).save(
        os.path.join(tmp, "masks", f"{k}.png"), format="PNG")
    if not windows:
      Image.fromarray(example[3]).save(os.path.join(tmp, BACKGROUNDS, f"{k}.png"), format="PNG")
    effects.append(effect)
    sources.append(i - 1)
  tag = WINDOW_STREAM_TAG if windows else HELDOUT_STREAM_TAG
  manifest = {
      "format": HELDOUT_FORMAT,
      "params": params,
      "stream": (f"example i = render_example(SeedSequence([seed, i, {tag:#x}])); "
                 "the train split uses [seed, i], so the two never share a generator"),
      "use": "held-out evaluation only: never train G, A or a student on it",
      "masks": "0/255 L PNG, exact object coverage >= 0.5 of the clean render",
      "effects": effects,
  }
  if windows:
    manifest.update(sources=sources, use="validation of --fit (non-square windows, "
                    "render_window_example); never train G, A or a student on it")
  else:
    manifest["backgrounds"] = _BACKGROUNDS_NOTE
  if params.get("validation"):
    manifest["use"] = ("validation: every choice of a threshold, flag value or setting is made "
                       "here; never train G, A or a student on it")
  with open(os.path.join(tmp, HELDOUT_MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)


def _add_backgrounds(out_dir: str, params: dict) -> None:
  """Adds backgrounds/ to a complete split written before they existed (its images and masks are
  checked against the renderer and left untouched)."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  from l4f_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from l4f_jax.io import files  # pylint: disable=import-outside-toplevel
  tmp = tempfile.mkdtemp(dir=out_dir, prefix=f".tmp_{BACKGROUNDS}_")
  try:
    for i in range(params["n"]):
      image, _, _, background = render_heldout_example(
          i, params["size"], params["seed"], params["photo_effects"], with_background=True)
      with Image.open(os.path.join(out_dir, "images", f"{i}.png")) as img:
        if not np.array_equal(np.asarray(img.convert("RGB")), image):
          raise UserError(f"{out_dir}: images/{i}.png is not the renderer's image {i}; pass a "
                          "new folder")
      Image.fromarray(background).save(os.path.join(tmp, f"{i}.png"), format="PNG")
    os.chmod(tmp, files.dir_mode())
    shutil.rmtree(os.path.join(out_dir, BACKGROUNDS), ignore_errors=True)
    os.rename(tmp, os.path.join(out_dir, BACKGROUNDS))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  path = os.path.join(out_dir, HELDOUT_MANIFEST)
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  manifest["backgrounds"] = _BACKGROUNDS_NOTE

  def write(tmp_path):
    with open(tmp_path, "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
  files.atomic_write(path, write)


def export_real_test_split(out_dir, size: int = 64, n: int = 256, seed: int = 0,
                           photo_effects: bool = True, overwrite: bool = False,
                           windows: bool = False, validation: bool = False) -> str:
  """Writes the held-out test split: `<out_dir>/images/<i>.png`, `<out_dir>/masks/<i>.png` (0/255),
  `<out_dir>/backgrounds/<i>.png` (the picture without its object, `render_heldout_example`) and
  `<out_dir>/split.json` (parameters, per-example photo effects); returns out_dir.

  Atomic: everything is written to a hidden temporary folder next to out_dir and renamed into
  place, so out_dir is either absent or complete. Idempotent: an existing complete split with the
  same parameters is reused as is (nothing is rewritten). A folder with other parameters, an
  incomplete split or a folder that is not a split raises UserError; `overwrite=True` replaces a
  split with other parameters or an incomplete one (never a folder that is not a split).
  `windows=True` writes the non-square window split instead (`render_window_example`; `size` is
  the frame's side; no backgrounds). `validation=True` writes the validation split (the comment
  at VALIDATION_SEED; a seed equal to REAL_TEST_SEED is refused). A complete split written before
  backgrounds/ existed gets them added; its images and masks stay as they are.
  """
  import shutil  # pylint: disable=import-outside-toplevel
  from l4f_jax.io import files  # pylint: disable=import-outside-toplevel
  from l4f_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  params = _heldout_params(size, n, seed, photo_effects, windows, validation)
  out_dir = os.path.abspath(os.fspath(out_dir))
  status = _heldout_status(out_dir, params)
  if status == "backgrounds":
    _add_backgrounds(out_dir, params)
    status = _heldout_status(out_dir, params)
  if status == "match":
    return out_dir
  replace = status not in ("absent", "empty")
  if replace and not (overwrite and (status.startswith("was built") or
                                     status.startswith("is incomplete"))):
    raise UserError(f"{out_dir}: {status}; pass a new folder")
  parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp_{name}_")
  old = None
  try:
    _write_heldout(tmp, params)
    os.chmod(tmp, files.dir_mode())
    if replace:
      old = tempfile.mkdtemp(dir=parent, prefix=f".old_{name}_")
      os.rename(out_dir, os.path.join(old, name))
    try:
      os.rename(tmp, out_dir)
    except OSError:
      # Another process finished first (out_dir is no longer absent or empty).
      if old is not None and not os.path.exists(out_dir):
        os.rename(os.path.join(old, name), out_dir)  # put the replaced split back
      now = _heldout_status(out_dir, params)
      if now != "match":
        raise UserError(f"{out_dir}: appeared while the real test split was being written and "
                        f"{now}; pass a new folder") from None
  finally:
    for d in (tmp, old):
      if d is not None and os.path.exists(d):
        shutil.rmtree(d, ignore_errors=True)
  logging.info("Wrote the %s split (%d images, %d px, seed %d) to %s",
               "validation" if validation else "real test", params["n"], params["size"],
               params["seed"], out_dir)
  return out_dir


def ensure_real_test_split(path, size: int, n: int, seed: int = REAL_TEST_SEED,
                           photo_effects: bool = True) -> str:
  """`export_real_test_split(path, ...)` on process 0 (reused when already there); every process
  then waits for it, as `ensure_shapes` does. Returns the split folder."""
  import jax  # pylint: disable=import-outside-toplevel
  out = os.path.abspath(os.fspath(path))
  if jax.process_index() == 0:
    export_real_test_split(out, size=size, n=n, seed=seed, photo_effects=photo_effects)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("l4f_shapes_real_test_ready")
  return out


def ensure_real_val_split(path, size: int, n: int, seed: int = VALIDATION_SEED,
                          photo_effects: bool = True) -> str:
  """The validation split (the comment at VALIDATION_SEED) at `path`, as `ensure_real_test_split`
  builds the test split; a seed equal to the test split's (REAL_TEST_SEED) is refused."""
  import jax  # pylint: disable=import-outside-toplevel
  out = os.path.abspath(os.fspath(path))
  if jax.process_index() == 0:
    export_real_test_split(out, size=size, n=n, seed=seed, photo_effects=photo_effects,
                           validation=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("l4f_shapes_val_ready")
  return out
