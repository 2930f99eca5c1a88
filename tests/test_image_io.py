"""Raw-image I/O (decoding of every input kind, model input, write-back, stems, contact sheet), the
held-out real test split of l4f_shapes, the error-overlay colours and stem-paired evaluation."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from l4f_jax.datasets import shapes
from l4f_jax.method import evaluation as ev
from l4f_jax.io import image_io
from l4f_jax.errors import UserError


def _round(x):
  return np.floor(np.asarray(x, np.float64) + 0.5).astype(np.uint8)


def _over_white(colour, alpha):
  a = np.asarray(alpha, np.float64)[..., None] / 255.0
  return _round(np.asarray(colour, np.float64) * a + 255.0 * (1.0 - a))


def _touch_png(path, value=0, size=(4, 4)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, (value, value, value)).save(path)


# ----------------------------------------------------------------------------- listing and stems


def test_list_inputs_folder_files_and_errors(tmp_path):
  root = tmp_path / "imgs"
  for rel in ("10.png", "2.png", "1.jpg", "sub/3.webp", ".hidden.png", "sub/.x/4.png", "a.PNG"):
    _touch_png(str(root / rel))
  (root / "notes.txt").write_text("not an image")
  got = [os.path.relpath(p, root) for p in image_io.list_inputs(str(root))]
  assert got == ["1.jpg", "2.png", "10.png", "a.PNG", os.path.join("sub", "3.webp")]
  # Explicit files: given order, repeats listed once, comma-separated or a list.
  a, b = str(root / "2.png"), str(root / "1.jpg")
  assert image_io.list_inputs(f"{a},{b},{a}") == [a, b]
  assert image_io.list_inputs([b, a]) == [b, a]
  with pytest.raises(UserError, match="--images=.*missing.png: no such file") as e:
    image_io.list_inputs(f"{a},{tmp_path / 'missing.png'}")
  assert "\n" not in str(e.value)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="--images=.*empty: no image files"):
    image_io.list_inputs(str(tmp_path / "empty"))


def test_output_stems_are_unique(tmp_path):
  root = tmp_path / "in"
  for rel in ("a.png", "a.jpg", "sub/a.png", "sub__a.png", "A.bmp", "deep/er/x.png"):
    _touch_png(str(root / rel))
  paths = image_io.list_inputs(str(root))
  stems = image_io.output_stems(paths, str(root))
  assert dict(zip((os.path.relpath(p, root) for p in paths), stems)) == {
      "A.bmp": "A", "a.jpg": "a_1", "a.png": "a_2",
      os.path.join("deep", "er", "x.png"): "deep__er__x",
      os.path.join("sub", "a.png"): "sub__a", "sub__a.png": "sub__a_1"}
  assert len({s.casefold() for s in stems}) == len(stems)
  # Explicit files from two folders with the same name.
  other = tmp_path / "other" / "a.png"
  _touch_png(str(other))
  assert image_io.output_stems([str(root / "a.png"), str(other)]) == ["a", "a_1"]
  assert image_io.output_stems([str(other)], str(root)) == ["a"]


# ----------------------------------------------------------------------------- decoding


def test_read_rgb_modes(tmp_path):
  rng = np.random.default_rng(0)
  p = lambda name: str(tmp_path / name)

  grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  Image.fromarray(grey).save(p("l.png"))
  np.testing.assert_array_equal(image_io.read_rgb(p("l.png")), np.repeat(grey[..., None], 3, -1))

  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(p("rgb.png"))
  np.testing.assert_array_equal(image_io.read_rgb(p("rgb.png")), rgb)

  alpha = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  alpha[0, :3] = (0, 255, 128)
  Image.fromarray(np.stack([grey, alpha], -1)).save(p("la.png"))   # [H, W, 2] uint8: LA
  want = _over_white(np.repeat(grey[..., None], 3, -1), alpha)
  np.testing.assert_array_equal(image_io.read_rgb(p("la.png")), want)

  Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1)).save(p("rgba.png"))
  got = image_io.read_rgb(p("rgba.png"))
  np.testing.assert_array_equal(got, _over_white(rgb, alpha))
  assert got[0, 0].tolist() == [255, 255, 255] and got[0, 1].tolist() == rgb[0, 1].tolist()

  palette = np.array([[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
  idx = rng.integers(0, 4, (5, 7), dtype=np.uint8)
  pim = Image.frombytes("P", (7, 5), idx.tobytes())
  pim.putpalette(palette.reshape(-1).tolist())
  pim.save(p("p.png"))
  np.testing.assert_array_equal(image_io.read_rgb(p("p.png")), palette[idx])
  pim.save(p("pt.png"), transparency=1)   # palette entry 1 fully transparent
  pim.save(p("pt.gif"), transparency=1)
  want = palette[idx].copy()
  want[idx == 1] = 255
  for f in ("pt.png", "pt.gif"):
    np.testing.assert_array_equal(image_io.read_rgb(p(f)), want, err_msg=f)

  v16 = np.array([[0, 1, 257, 32768, 40000, 65535]], np.uint16)
  Image.fromarray(v16).save(p("g16.png"))
  with Image.open(p("g16.png")) as im:
    assert im.mode.startswith("I")   # really stored as 16 bit
  got = image_io.read_rgb(p("g16.png"))
  np.testing.assert_array_equal(got[..., 0], [[0, 0, 1, 128, 156, 255]])
  assert (got[..., 0] == got[..., 2]).all() and got.mean() < 200   # not clipped to white
  Image.fromarray(v16.astype(np.int32)).save(p("i32.tif"))   # mode I, 32-bit TIFF
  np.testing.assert_array_equal(image_io.read_rgb(p("i32.tif"))[..., 1], [[0, 0, 1, 128, 156, 255]])

  f = np.array([[0.0, 0.25, 0.5, 1.0, -0.5, np.nan]], np.float32)
  Image.fromarray(f).save(p("f.tif"))
  np.testing.assert_array_equal(image_io.read_rgb(p("f.tif"))[..., 0], [[0, 64, 128, 255, 0, 0]])
  Image.fromarray(np.array([[0.0, 1.0, 2.0, 4.0]], np.float32)).save(p("f4.tif"))   # max > 1
  np.testing.assert_array_equal(image_io.read_rgb(p("f4.tif"))[..., 2], [[0, 64, 128, 255]])

  Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p("cmyk.jpg"), quality=100)
  Image.new("CMYK", (16, 16), (0, 0, 0, 128)).save(p("cmyk_k.jpg"), quality=100)
  with Image.open(p("cmyk.jpg")) as im:
    assert im.mode == "CMYK"
  assert np.abs(image_io.read_rgb(p("cmyk.jpg")).astype(int) - [255, 0, 0]).max() <= 2
  assert np.abs(image_io.read_rgb(p("cmyk_k.jpg")).astype(int) - 127).max() <= 2

  Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(p("bw.png"))
  np.testing.assert_array_equal(image_io.read_rgb(p("bw.png"))[..., 0], [[0, 255, 0]])


def test_read_rgb_applies_exif_orientation(tmp_path):
  # Stored 32 wide x 16 high: left half red, right half green. Orientation 6 = rotate 90 deg
  # clockwise for display, so the displayed picture is 16 wide x 32 high, red on top.
  stored = np.zeros((16, 32, 3), np.uint8)
  stored[:, :16] = (255, 0, 0)
  stored[:, 16:] = (0, 255, 0)
  im = Image.fromarray(stored)
  exif = im.getexif()
  exif[0x0112] = 6
  im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
  got = image_io.read_rgb(str(tmp_path / "rot.jpg")).astype(int)
  assert got.shape == (32, 16, 3)
  assert np.abs(got[6, 8] - [255, 0, 0]).max() < 20 and np.abs(got[25, 8] - [0, 255, 0]).max() < 20


def test_read_rgb_unreadable(tmp_path):
  noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(tmp_path / "full.png")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.png").write_text("hello, I am not a picture\nsecond line\n")
  (tmp_path / "empty.jpg").write_bytes(b"")
  for name, reason in (("cut.png", "truncated"), ("text.png", "not an image"),
                       ("empty.jpg", "not an image"), ("missing.png", "no such file")):
    with pytest.raises(image_io.UnreadableImage, match=reason) as e:
      image_io.read_rgb(str(tmp_path / name))
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "unreadable image" in msg


def test_read_rgb_of_an_upload_and_the_pixel_limit(tmp_path):
  """A file object (an HTTP upload) reads as its file does; errors name 'the upload'; an image
  over max_pixels raises TooManyPixels (an UnreadableImage) before it is decoded."""
  rgb = np.random.default_rng(5).integers(0, 256, (9, 14, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "a.png")
  data = (tmp_path / "a.png").read_bytes()
  np.testing.assert_array_equal(image_io.read_rgb(io.BytesIO(data)), rgb)
  with pytest.raises(image_io.UnreadableImage, match="^the upload: unreadable image"):
    image_io.read_rgb(io.BytesIO(b"not a picture"))
  with pytest.raises(image_io.TooManyPixels, match="^the upload: 14x9 is 0 MP, over the limit"):
    image_io.read_rgb(io.BytesIO(data), max_pixels=125)
  with pytest.raises(image_io.TooManyPixels, match="a.png: 14x9"):
    image_io.read_rgb(str(tmp_path / "a.png"), max_pixels=125)
  assert image_io.read_rgb(io.BytesIO(data), max_pixels=126).shape == (9, 14, 3)


# ----------------------------------------------------------------------------- model in / out


def test_model_input_and_alpha_round_trip():
  rgb = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  x = image_io.to_model_input(rgb, 16)
  assert x.shape == (16, 16, 3) and x.dtype == np.float32
  assert x.min() >= -1.0 and x.max() <= 1.0
  flat = np.full((30, 50, 3), (255, 0, 51), np.uint8)
  np.testing.assert_allclose(image_io.to_model_input(flat, 16)[3, 7], [1.0, -1.0, -0.6], atol=1e-6)
  same = image_io.to_model_input(rgb[:16, :16], 16)   # already size x size: not resampled
  np.testing.assert_allclose(same, rgb[:16, :16] / 127.5 - 1.0, atol=1e-6)

  alpha = np.random.default_rng(3).uniform(-0.3, 1.3, (16, 16)).astype(np.float32)
  back = image_io.alpha_to_original(alpha, (30, 50))
  assert back.shape == (30, 50) and back.dtype == np.float32
  assert back.min() >= 0.0 and back.max() <= 1.0
  np.testing.assert_allclose(image_io.alpha_to_original(np.full((16, 16, 1), 0.25), (7, 90)), 0.25,
                             atol=1e-6)
  step = np.zeros((16, 16), np.float32)
  step[:, 8:] = 1.0                       # left half background, right half foreground
  wide = image_io.alpha_to_original(step, (8, 64))
  assert (wide[:, :28] < 0.01).all() and (wide[:, 36:] > 0.99).all()


def test_write_segmentation(tmp_path):
  h, w = 12, 20
  rgb = np.random.default_rng(4).integers(0, 256, (h, w, 3), dtype=np.uint8)
  alpha = np.tile(np.linspace(-0.1, 1.1, w, dtype=np.float32), (h, 1))
  paths = image_io.write_segmentation(tmp_path / "out", "cats__a", rgb, alpha, threshold=0.5)
  assert paths == {k: str(tmp_path / "out" / d / "cats__a.png")
                   for k, d in (("mask", "masks"), ("alpha", "alpha"), ("cutout", "cutout"))}
  clipped = np.clip(alpha, 0, 1)
  soft = _round(clipped * 255.0)
  with Image.open(paths["mask"]) as m, Image.open(paths["alpha"]) as a, \
      Image.open(paths["cutout"]) as c:
    assert (m.mode, a.mode, c.mode) == ("L", "L", "RGBA")
    assert m.size == a.size == c.size == (w, h)
    np.testing.assert_array_equal(np.asarray(m), np.where(clipped >= 0.5, 255, 0))
    np.testing.assert_array_equal(np.asarray(a), soft)
    np.testing.assert_array_equal(np.asarray(c)[..., :3], rgb)
    np.testing.assert_array_equal(np.asarray(c)[..., 3], soft)
  assert not [f for d in ("masks", "alpha", "cutout")
              for f in os.listdir(tmp_path / "out" / d) if f.startswith(".tmp_")]
  only = image_io.write_segmentation(tmp_path / "two", "b", rgb, alpha, 0.5, ("cutout",),
                                     bgcolor=(0, 255, 10))
  assert list(only) == ["cutout"] and os.listdir(tmp_path / "two") == ["cutout"]
  with Image.open(only["cutout"]) as c:
    over = np.asarray(c)
  assert c.mode == "RGB"
  a = clipped[..., None]
  want = a * rgb + (1 - a) * np.array([0, 255, 10])  # float32 arithmetic: ties may round down
  assert np.abs(over.astype(float) - want).max() <= 0.5 + 1e-4
  with pytest.raises(ValueError, match="does not match image"):
    image_io.write_segmentation(tmp_path / "out", "x", rgb, alpha[:, :5])
  with pytest.raises(ValueError, match="bad stem"):
    image_io.write_segmentation(tmp_path / "out", "a/b", rgb, alpha)


def test_contact_sheet(tmp_path):
  wide = np.full((10, 40, 3), (200, 30, 30), np.uint8)
  tall = np.full((40, 20, 3), (30, 30, 200), np.uint8)
  half = np.zeros((40, 20), np.float32)
  half[:, 10:] = 0.95                           # right half over the 0.9 threshold
  rows = [(wide, np.zeros((10, 40), np.float32)), (tall, half)]
  sheet = image_io.save_contact_sheet(tmp_path / "sheet.png", rows, ["wide.png", "tall.png"],
                                      cell=32)
  label_w, title_h = image_io._LABEL_WIDTH, image_io._TITLE_HEIGHT
  assert sheet.dtype == np.uint8
  assert sheet.shape == (2 + title_h + 2 + 2 * 34, 2 + label_w + 2 + 4 * 34, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sheet.png")), sheet)
  y0, x0 = 4 + title_h, 4 + label_w
  cell = lambda r, c: sheet[y0 + r * 34:y0 + r * 34 + 32, x0 + c * 34:x0 + c * 34 + 32]
  img0, mask0, matte0, cut0 = (cell(0, c) for c in range(4))
  assert img0[16, 16].tolist() == [200, 30, 30]
  assert img0[0, 16].tolist() == [96, 96, 96]   # letterbox
  assert mask0[16, 16].tolist() == matte0[16, 16].tolist() == [0, 0, 0]
  assert {tuple(v) for v in cut0[12:20].reshape(-1, 3)} == {(204, 204, 204), (153, 153, 153)}
  mask1, matte1 = cell(1, 1), cell(1, 2)
  assert mask1[16, 12].tolist() == [0] * 3 and mask1[16, 20].tolist() == [255] * 3
  assert matte1[16, 20].tolist() == [242] * 3   # round(0.95 * 255)
  assert cell(1, 3)[16, 20].tolist() == [36, 36, 198]  # 0.95 blue over the checkerboard
  labels, titles = sheet[y0:y0 + 32, 2:2 + label_w], sheet[2:2 + title_h, x0:]
  assert (labels < 128).any() and (titles < 128).any()   # names and column titles are drawn
  many = image_io.contact_sheet(rows * 10, cell=16, max_items=12)
  assert many.shape[0] == 2 + title_h + 2 + 12 * 18   # one row per input, 12 at most


def test_fit_tiles_put_every_pixel_back_in_place():
  """A 'model' whose alpha is the tile's red channel: after fit_tiles and unfit_alpha each mode
  must return the input's red channel (up to resampling), so no mode shifts, flips or stretches
  the mask against the picture."""
  yy, xx = np.mgrid[0:60, 0:150].astype(np.float32)
  red = 0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0)        # smooth, no symmetry
  rgb = np.stack([np.floor(red * 255 + 0.5), np.full_like(red, 40), np.full_like(red, 90)],
                 -1).astype(np.uint8)
  for img in (rgb, rgb.transpose(1, 0, 2).copy()):
    want = img[..., 0].astype(np.float32) / 255
    for fit, count in (("pad", 1), ("crop", 3), ("stretch", 1)):
      tiles, plan = image_io.fit_tiles(img, 64, fit)
      assert tiles.shape == (count, 64, 64, 3) and tiles.dtype == np.uint8, fit
      back = image_io.unfit_alpha(tiles[..., 0].astype(np.float32) / 255, plan)
      assert back.shape == img.shape[:2] and back.dtype == np.float32
      inner = (slice(3, -3), slice(3, -3))   # resampling blurs the outermost pixels
      assert np.abs(back - want)[inner].mean() < 0.03, fit
  tiles, plan = image_io.fit_tiles(rgb, 64, "pad")
  oy, ox, fh, fw = plan[3]
  assert (fh, fw, ox) == (26, 64, 0) and oy == 19
  np.testing.assert_array_equal(tiles[0, :oy], np.repeat(tiles[0, oy:oy + 1], oy, 0))  # edge
  square = rgb[:, :60]
  for fit in image_io.FITS:   # a square picture is simply resized in every mode
    np.testing.assert_array_equal(image_io.fit_tiles(square, 32, fit)[0],
                                  image_io.fit_tiles(square, 32, "stretch")[0])
  with pytest.raises(ValueError, match="fit must be one of"):
    image_io.fit_tiles(rgb, 64, "zoom")


def test_as_rgb_reads_arrays_and_pil_images():
  rgba = np.zeros((4, 6, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 0
  np.testing.assert_array_equal(image_io.as_rgb(rgba), np.full((4, 6, 3), 255, np.uint8))
  grey = np.arange(24, dtype=np.uint8).reshape(4, 6)
  np.testing.assert_array_equal(image_io.as_rgb(grey)[..., 2], grey)
  np.testing.assert_array_equal(image_io.as_rgb(Image.fromarray(grey)), image_io.as_rgb(grey))
  np.testing.assert_array_equal(image_io.as_rgb(np.full((2, 3, 3), 0.5)), 128)
  for bad in (np.zeros((4, 6, 2), np.uint8), np.full((2, 2, 3), 1.5), np.zeros((0, 3, 3))):
    with pytest.raises(ValueError):
      image_io.as_rgb(bad)


# ----------------------------------------------------------------------------- held-out test split


def test_heldout_stream_is_disjoint_from_train():
  """Every train example of the default build (seed 0, 4096 examples; also seeds 1-3) has a
  SeedSequence pool, hence generator, that no held-out example of the default split shares."""
  train = {tuple(np.random.SeedSequence([seed, i]).pool) for seed in range(4) for i in range(4096)}
  held = [tuple(np.random.SeedSequence(shapes.heldout_entropy(i, 0)).pool) for i in range(256)]
  assert len(train) == 4 * 4096 and len(set(held)) == 256
  assert train.isdisjoint(held)
  state = lambda ss: tuple(np.random.default_rng(ss).bit_generator.state["state"].values())
  train_states = {state([0, i]) for i in range(4096)}
  assert train_states.isdisjoint(state(np.random.SeedSequence(shapes.heldout_entropy(i)))
                                 for i in range(256))
  # And the pictures differ: the first held-out images against the first train images.
  train_imgs = {shapes.render_example([0, i], 64)[0].tobytes() for i in range(64)}
  for i in range(16):
    image, _, _ = shapes.render_heldout_example(i, 64, photo_effects=False)
    assert image.tobytes() not in train_imgs


def test_validation_stream_is_disjoint_from_train_and_test():
  """At the indices the runs use (train seed 0: the GAN's 8192 and A's 2048 examples; the test
  split's 512 images at seed 0; the validation split's 512 at seed 1; the windows' first 4096
  frames) no two examples share a SeedSequence pool, hence a generator; the first validation and
  test pictures differ; the test split's seed is refused for a validation split."""
  pool = lambda entropy: tuple(np.random.SeedSequence(entropy).pool)
  train = {pool([0, i]) for i in range(8192)}
  test = {pool(shapes.heldout_entropy(i, shapes.REAL_TEST_SEED)) for i in range(512)}
  val = {pool(shapes.heldout_entropy(i, shapes.VALIDATION_SEED)) for i in range(512)}
  windows = {pool(shapes.heldout_entropy(i, 0, shapes.WINDOW_STREAM_TAG)) for i in range(4096)}
  assert (len(train), len(test), len(val), len(windows)) == (8192, 512, 512, 4096)
  assert len(train | test | val | windows) == 8192 + 512 + 512 + 4096
  test_imgs = {shapes.render_heldout_example(i, 64)[0].tobytes() for i in range(32)}
  assert not test_imgs & {shapes.render_heldout_example(i, 64, seed=shapes.VALIDATION_SEED)[0]
                          .tobytes() for i in range(32)}
  with pytest.raises(UserError, match="real test split's seed") as e:
    shapes.export_real_test_split("/nonexistent/val", size=32, n=2, seed=shapes.REAL_TEST_SEED,
                                  validation=True)
  assert "\n" not in str(e.value)


def test_split_backgrounds(tmp_path):
  """backgrounds/<i>.png: the picture without its object. It holds no foreground by the colour
  rule, equals the clean image away from the object, and through the image's photo effect; a
  split written before backgrounds existed gets them added, its images untouched."""
  a = shapes.ensure_real_val_split(tmp_path / "val", 32, 8)
  manifest = json.load(open(os.path.join(a, "split.json")))
  assert manifest["params"] == {"size": 32, "n": 8, "seed": 1, "photo_effects": True,
                                "validation": True}
  for i, effect in enumerate(manifest["effects"]):
    bg = np.asarray(Image.open(os.path.join(a, "backgrounds", f"{i}.png")))
    image = np.asarray(Image.open(os.path.join(a, "images", f"{i}.png")))
    mask = np.asarray(Image.open(os.path.join(a, "masks", f"{i}.png"))) == 255
    assert shapes.oracle_mask(bg).mean() == 0 and shapes.oracle_mask(image)[mask].mean() > 0.5
    near = mask.copy()   # the object and 3 px around it (its anti-aliased edge, the blur)
    for _ in range(3):
      near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(
          near, -1, 1)
    diff = np.abs(bg[~near].astype(int) - image[~near])
    if effect["kind"] == "none":
      assert diff.max() == 0
    # JPEG: the object's colour reaches its 16 px chroma blocks, so only a mean bound.
    assert diff.mean() < (1.0 if effect["kind"] == "blur" else 6.0), (effect, diff.mean())
  b = shapes.export_real_test_split(tmp_path / "old", size=32, n=4)
  before = {n: open(os.path.join(b, "backgrounds", n), "rb").read() for n in
            os.listdir(os.path.join(b, "backgrounds"))}
  stamp = os.stat(os.path.join(b, "images", "0.png")).st_mtime_ns
  import shutil
  shutil.rmtree(os.path.join(b, "backgrounds"))
  assert shapes.ensure_real_test_split(b, 32, 4) == b
  assert os.stat(os.path.join(b, "images", "0.png")).st_mtime_ns == stamp
  assert {n: open(os.path.join(b, "backgrounds", n), "rb").read() for n in
          os.listdir(os.path.join(b, "backgrounds"))} == before
  assert not [n for n in os.listdir(b) if n.startswith(".")]


def test_heldout_split_export(tmp_path, monkeypatch):
  a = shapes.export_real_test_split(tmp_path / "a", size=32, n=8, seed=0)
  b = shapes.export_real_test_split(tmp_path / "b", size=32, n=8, seed=0)
  for sub in ("images", "masks"):
    names = sorted(os.listdir(os.path.join(a, sub)), key=ev.natural_key)
    assert names == [f"{i}.png" for i in range(8)]
    for i in range(8):   # deterministic
      assert (open(os.path.join(a, sub, f"{i}.png"), "rb").read()
              == open(os.path.join(b, sub, f"{i}.png"), "rb").read())
  manifest = json.load(open(os.path.join(a, "split.json")))
  assert manifest["params"] == {"size": 32, "n": 8, "seed": 0, "photo_effects": True}
  for i, effect in enumerate(manifest["effects"]):
    image, mask, want = shapes.render_heldout_example(i, 32, 0)
    clean, clean_mask = shapes.render_example(np.random.SeedSequence(shapes.heldout_entropy(i)), 32)
    assert effect == want and (mask == clean_mask).all()
    assert np.array_equal(image, clean) == (effect["kind"] == "none")
    stored = np.asarray(Image.open(os.path.join(a, "images", f"{i}.png")))
    np.testing.assert_array_equal(stored, image)
    m = np.asarray(Image.open(os.path.join(a, "masks", f"{i}.png")))
    assert set(np.unique(m)) <= {0, 255}
    np.testing.assert_array_equal(m == 255, mask)

  # Idempotent: reused as is; other parameters refused; overwrite replaces a split only.
  stamp = os.stat(os.path.join(a, "images", "0.png")).st_mtime_ns
  assert shapes.ensure_real_test_split(a, 32, 8) == a
  assert os.stat(os.path.join(a, "images", "0.png")).st_mtime_ns == stamp
  with pytest.raises(UserError, match="was built with") as e:
    shapes.export_real_test_split(a, size=32, n=9)
  assert "\n" not in str(e.value)
  shapes.export_real_test_split(a, size=32, n=4, overwrite=True)
  assert json.load(open(os.path.join(a, "split.json")))["params"]["n"] == 4
  assert len(os.listdir(os.path.join(a, "images"))) == 4
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "keep.txt").write_text("user data")
  with pytest.raises(UserError, match="not a real test split"):
    shapes.export_real_test_split(tmp_path / "mine", size=32, n=4, overwrite=True)
  assert (tmp_path / "mine" / "keep.txt").exists()

  # Atomic: a failure half-way leaves neither the folder nor temporaries behind.
  real = shapes.render_heldout_example

  def flaky(i, *args, **kwargs):
    if i == 3:
      raise RuntimeError("disk full")
    return real(i, *args, **kwargs)

  monkeypatch.setattr(shapes, "render_heldout_example", flaky)
  with pytest.raises(RuntimeError, match="disk full"):
    shapes.export_real_test_split(tmp_path / "c", size=32, n=6)
  assert sorted(os.listdir(tmp_path)) == ["a", "b", "mine"]


# ----------------------------------------------------------------------------- evaluation


def test_error_overlay_colours_stay_visible():
  assert ev.FALSE_POSITIVE_COLOUR == (255, 255, 0) and ev.FALSE_NEGATIVE_COLOUR == (0, 255, 255)
  image, mask = shapes.render_example([0, 0], 64)
  nothing = np.zeros_like(mask)
  fn = ev.error_overlay(image, nothing, mask).astype(float)   # every object pixel missed
  shift = np.linalg.norm(fn - image, axis=-1)[mask]
  assert shift.min() > 0.6 * 250                               # cyan on warm: always visible
  fp = ev.error_overlay(image, ~nothing, mask).astype(float)  # every background pixel claimed
  assert np.linalg.norm(fp - image, axis=-1)[~mask].min() > 0.6 * 150
  obj = image[mask].astype(float)                              # marked background != object
  marked = fp[~mask][::7]
  assert np.linalg.norm(marked[:, None] - obj[None, ::5], axis=-1).min() > 20


def _write_masks(folder, masks: dict, ext="png"):
  os.makedirs(folder, exist_ok=True)
  for stem, m in masks.items():
    Image.fromarray(m).save(os.path.join(folder, f"{stem}.{ext}"))


def test_evaluate_prediction_folder(tmp_path):
  rng = np.random.default_rng(5)
  gt = {s: rng.random((6, 8)) < 0.4 for s in ("1", "2", "10")}
  pred = {s: rng.random((6, 8)) < 0.4 for s in gt}
  want = ev.mask_metrics([gt[s] for s in ("1", "2", "10")], [pred[s] for s in ("1", "2", "10")])
  _write_masks(tmp_path / "gt", {s: m.astype(np.uint8) * 255 for s, m in gt.items()})
  # Predictions stored as 0/1 (max value 1), one as BMP, in another order on disk.
  _write_masks(tmp_path / "pred01", {s: m.astype(np.uint8) for s, m in pred.items() if s != "2"})
  _write_masks(tmp_path / "pred01", {"2": pred["2"].astype(np.uint8)}, ext="bmp")
  got = ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "pred01")
  assert got["confusion"] == want["confusion"] and got["miou"] == want["miou"]
  assert got["mask_values"] == {"gt": "thresholded at half scale", "pred": "0/1"}
  assert got["pairing"] == "stem" and got["num_pairs"] == 3
  # The official reader (//255) sees no foreground in 0/1 masks at all.
  _write_masks(tmp_path / "pred01png", {s: m.astype(np.uint8) for s, m in pred.items()})
  assert ev.evaluate_mask_folders(tmp_path / "gt", tmp_path / "pred01png")["foreground"]["iou"] == 0
  # Soft 8-bit predictions are thresholded at 128; 16-bit 0/65535 ones at 32768.
  soft = {s: np.where(m, 128, 127).astype(np.uint8) for s, m in pred.items()}
  _write_masks(tmp_path / "soft", soft)
  assert ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "soft")["confusion"] == \
      want["confusion"]
  _write_masks(tmp_path / "p16", {s: m.astype(np.uint16) * 65535 for s, m in pred.items()})
  assert ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "p16")["confusion"] == \
      want["confusion"]

  # Missing and extra stems: one line naming both.
  _write_masks(tmp_path / "odd", {"1": soft["1"], "2": soft["2"], "11": soft["10"]})
  with pytest.raises(UserError, match=r"1 GT mask\(s\) have no prediction \(10\) and "
                                      r"1 prediction\(s\) have no GT mask \(11\)") as e:
    ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "odd")
  assert "\n" not in str(e.value)
  _write_masks(tmp_path / "dup", {s: soft[s] for s in gt})
  _write_masks(tmp_path / "dup", {"1": soft["1"]}, ext="bmp")
  with pytest.raises(UserError, match="share the stem '1'"):
    ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "dup")
  _write_masks(tmp_path / "small", {s: soft[s][:5] for s in gt})
  with pytest.raises(UserError, match="differs from its GT"):
    ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "small")
  with pytest.raises(UserError, match="not a folder of masks"):
    ev.evaluate_prediction_folder(tmp_path / "gt", tmp_path / "nowhere")


def test_window_examples_are_non_square_and_hold_the_whole_object(tmp_path):
  found = 0
  for i in range(12):
    example = shapes.render_window_example(i, frame=64)
    _, full, _ = shapes.render_heldout_example(i, 64, tag=shapes.WINDOW_STREAM_TAG)
    if example is None:
      continue
    image, mask, _ = example
    found += 1
    h, w = mask.shape
    assert image.shape == (h, w, 3) and 64 in (h, w)
    assert max(h, w) / min(h, w) >= shapes.WINDOW_MIN_ASPECT
    assert mask.sum() == full.sum()   # every object pixel of the frame is in the window
  assert found >= 6
  path = shapes.export_real_test_split(tmp_path / "w", size=64, n=3, windows=True)
  names = sorted(os.listdir(os.path.join(path, "images")))
  assert names == sorted(os.listdir(os.path.join(path, "masks"))) == ["0.png", "1.png", "2.png"]
