"""GAN inversion and background-kept editing (method.inversion, method.editing, programs.invert,
programs.edit) on a tiny random 16 px generator."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from l4f_jax.config import resolve
from l4f_jax.method import editing, inversion
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import make_noise
from l4f_jax.system import training
from l4f_jax.programs.edit import EditConfig, edit
from l4f_jax.errors import UserError
from l4f_jax.programs.invert import InvertConfig, invert
from l4f_jax.system.weights import generator_from_config, load_generator, save_weights
from tests.tiny_world import tiny_config

SIZE = 16


def _random_params(shapes, seed: int):
  """Random values for a parameter-shape tree, as a trained network would roughly hold them:
  stored weights N(0, 1) (N(0, 1) / lr_mul in the mapping network), modulation biases 1, other
  biases N(0, 0.1), noise strengths 0.05 (small, as in trained generators, so that an image is
  mostly a function of w). Built in NumPy: no initialiser is compiled."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    p = jax.tree_util.keystr(path)
    if "noise" in p:
      return np.full(s.shape, 0.05, np.float32)
    if "modulation" in p and "bias" in p:
      return np.ones(s.shape, np.float32)
    scale = 0.1 if "bias" in p else (100.0 if "style_" in p else 1.0)
    return (scale * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _alpha_export(path, gen, fingerprint=None):
  """A random alpha network for `gen`, exported as training does (with the generator identity;
  `fingerprint` pretends it was trained on another generator)."""
  G, key = gen.module, jax.random.key(0)
  feats = jax.eval_shape(lambda p: select_features(G.apply(
      {"params": p}, jnp.zeros((1, G.style_dim)), noise_key=key)[1], G.size), gen.params)
  shapes = jax.eval_shape(lambda f: AlphaNetwork(G.size).init(key, f)["params"], feats)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  identity = gen.alpha_identity()
  if fingerprint:
    identity["generator_fingerprint"] = fingerprint
  save_weights(path, {"kind": "labels4free_alpha", **identity}, {"alpha": params})
  return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  base = tmp_path_factory.mktemp("inversion")
  config = tiny_config(SIZE)
  G = generator_from_config(config)
  key = jax.random.key(0)
  shapes = jax.eval_shape(lambda: G.init(key, jnp.zeros((1, G.style_dim)), noise_key=key))
  gen_dir = save_weights(str(base / "g"), config, {"g_ema": _random_params(shapes["params"], 0)})
  gen = load_generator(gen_dir)
  alpha_dir = _alpha_export(str(base / "alpha"), gen)
  other_alpha = _alpha_export(str(base / "alpha_other"), gen, fingerprint="0123456789abcdef")
  # Inputs: two images G made (one saved at another size and aspect), written as PNGs.
  z = jax.random.normal(jax.random.key(5), (2, G.style_dim))
  img, _ = G.apply({"params": gen.params}, z, noise=make_noise(jax.random.key(6), SIZE, 2))
  u8 = np.asarray(np.clip((np.asarray(img) + 1) * 127.5 + 0.5, 0, 255), np.uint8)
  folder = base / "images"
  folder.mkdir()
  Image.fromarray(u8[0]).save(folder / "a.png")
  Image.fromarray(u8[1]).resize((20, 13)).save(folder / "b.png")
  return dict(base=base, gen=gen, gen_dir=gen_dir, alpha=alpha_dir, other_alpha=other_alpha,
              images=str(folder))


# ------------------------------------------------------------------------------- method: inversion


def test_schedules_and_noise_maps():
  assert float(inversion.learning_rate(0.0, 0.1)) == 0.0
  assert float(inversion.learning_rate(0.5, 0.1)) == pytest.approx(0.1)
  assert float(inversion.learning_rate(0.025, 0.1)) == pytest.approx(0.05)
  assert float(inversion.learning_rate(0.875, 0.1)) == pytest.approx(0.05, abs=1e-6)
  assert float(inversion.jitter_strength(0.0, 2.0)) == pytest.approx(0.1)
  assert float(inversion.jitter_strength(0.8, 2.0)) == 0.0
  key = jax.random.key(0)
  white = [jax.random.normal(key, (2, 32, 32, 1)) * 3 + 1]
  smooth = [jnp.broadcast_to(jnp.linspace(-1, 1, 32)[None, :, None, None], (2, 32, 32, 1))]
  n = inversion.normalize_noise(white)[0]
  np.testing.assert_allclose(np.mean(n, axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(np.std(n, axis=(1, 2, 3), ddof=1), 1, atol=1e-5)
  r_white = inversion.noise_regularize(inversion.normalize_noise(white))
  r_smooth = inversion.noise_regularize(inversion.normalize_noise(smooth))
  assert r_white.shape == (2,) and np.all(r_smooth > 100 * r_white)


def test_inversion_recovers_an_image_that_g_generated(world):
  gen = world["gen"]
  G = gen.module
  # The same G without noise inputs (noise strengths 0): its images are functions of w alone.
  silent = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 0 if "noise" in jax.tree_util.keystr(p) else x, gen.params)
  cfg = resolve(inversion.ProjectorConfig, steps=150, latent="w")
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(2))

  @jax.jit
  def run(params):
    """PSNR of: the start (w-bar), the inversion, and G(true w, other noise maps) of an image
    G(w, noise) that G made."""
    w = G.apply({"params": params}, jax.random.normal(jax.random.key(1), (2, G.style_dim)),
                method=G.mapping)
    target, _ = inversion.synthesize(w, make_noise(jax.random.key(2), SIZE, 2), params,
                                     generator=G)
    w_avg, sigma = inversion.latent_std(G, params, training.stream_key(0, "w_avg"), 4096)
    state = inversion.init_state(keys, w_avg, generator=G, cfg=cfg)
    start, _ = inversion.synthesize(state.latent, state.noise, params, generator=G)
    state, _ = inversion.project(state, target, keys, params, sigma, generator=G, cfg=cfg,
                                 loss_fn=inversion.pixel_gradient_loss)
    recon, _ = inversion.synthesize(state.latent, state.noise, params, generator=G)
    other, _ = inversion.synthesize(w, make_noise(jax.random.key(7), SIZE, 2), params,
                                    generator=G)
    return (inversion.psnr(start, target), inversion.psnr(recon, target),
            inversion.psnr(other, target), state.noise[-1])

  before, after, _, noise = run(silent)
  # Bound fixed before this was first measured: without noise inputs the image is in G's range
  # as a function of w, so 150 steps must reach 30 dB and gain 10 dB over the start at w-bar.
  assert np.all(after >= 30.0), (before, after)
  assert np.all(after - before >= 10.0), (before, after)
  np.testing.assert_allclose(np.std(noise, axis=(1, 2, 3), ddof=1), 1, atol=1e-4)
  # With noise inputs (strength 0.05) the regularised, renormalised noise maps cannot copy the
  # target's own draw: the ceiling is G(true w, other noise maps) (22-24 dB here; this bound was
  # set after measuring the inversion at 22.6 / 25.2 dB: it must reach that ceiling).
  before, after, ceiling, _ = run(gen.params)
  assert np.all(after >= ceiling - 0.5), (before, after, ceiling)
  assert np.all(after - before >= 10.0), (before, after)


# --------------------------------------------------------------------------------- method: editing


def test_sefa_directions_are_orthonormal_eigenvectors(world):
  params = world["gen"].params
  a = editing.modulation_matrix(params)
  # rosinality's filter: conv1, every convs_* and to_rgb1; no to_rgbs_*.
  rows = sum(params[k]["conv"]["modulation"]["weight"].shape[1] for k in params
             if k in ("conv1", "to_rgb1") or k.startswith("convs_"))
  assert a.shape == (rows, world["gen"].module.style_dim)
  vals, v = editing.sefa_directions(a)
  ata = a.T @ a
  np.testing.assert_allclose(ata @ v, v * vals[None, :], atol=1e-8 * np.abs(vals).max())
  np.testing.assert_allclose(v.T @ v, np.eye(len(vals)), atol=1e-10)
  assert np.all(np.diff(vals) <= 0)
  np.testing.assert_allclose(vals, np.linalg.svd(a, compute_uv=False) ** 2, rtol=1e-8)
  w = jnp.zeros((2, 3, a.shape[1]))
  moved = editing.apply_direction(w, v[:, 0], 2.0)
  np.testing.assert_allclose(moved[1, 2], 2.0 * v[:, 0], rtol=1e-6)


def test_compositing_math_on_constructed_inputs():
  h = w = 4
  original = np.full((1, h, w, 3), -1.0, np.float32)
  original[0, 1:3, 1:3] = 1.0                                 # a 2x2 white object
  alpha = np.zeros((1, h, w, 1), np.float32)
  alpha[0, 1:3, 1:3] = 1.0
  alpha[0, 0, 0] = 0.6                                        # a soft halo pixel
  fill = np.asarray(editing.fill_region(alpha, 0.5, 0))
  assert fill.sum() == 5 and fill[0, 0, 0] and fill[0, 1, 1]
  one = np.zeros((1, 5, 5), bool)
  one[0, 2, 2] = True
  assert np.asarray(editing.dilate(one, 1)).sum() == 9
  completion = np.zeros_like(original)                        # a grey completed background
  b = np.asarray(editing.complete_background(original, completion, fill))
  assert np.all(b[0][fill[0]] == 0) and np.all(b[0][~fill[0]] == -1)
  edited = np.full_like(original, 0.5)
  alpha_edit = np.zeros_like(alpha)
  alpha_edit[0, 0, 1] = 1.0
  alpha_edit[0, 3, 3] = 0.25
  out = np.asarray(editing.composite(alpha_edit, edited, b))
  assert np.all(out[0, 0, 1] == 0.5)                          # alpha' = 1: the edit
  assert np.all(out[0, 1, 1] == 0.0)                          # alpha' = 0: the background B
  np.testing.assert_allclose(out[0, 3, 3], 0.25 * 0.5 + 0.75 * -1.0)
  keep = np.asarray(editing.background_pixels(alpha, alpha_edit, 0.9))
  assert keep.sum() == h * w - 4 - 1                          # object and the edit's pixel out
  sse, count = editing.masked_sse(out, original, keep)
  # Kept pixels that differ, on the [0, 1] scale: (0, 0) was filled (B = 0 vs -1: 0.5) and
  # (3, 3) mixes a quarter of the edit (-0.625 vs -1: 0.1875); 3 channels each.
  expect = 3 * (0.5 ** 2 + 0.1875 ** 2)
  d = (np.clip(out, -1, 1) - original) * 0.5
  np.testing.assert_allclose(sse, [np.sum(np.square(d) * keep[..., None])], rtol=1e-6)
  np.testing.assert_allclose(float(sse[0]), expect, rtol=1e-6)
  assert float(count[0]) == 3 * keep.sum()
  assert editing.psnr_from_sse(sse, count) == pytest.approx(10 * np.log10(count[0] / expect))
  assert editing.psnr_from_sse(0.0, 3.0) == float("inf")
  filled = editing.inpaint(np.zeros((1, 6, 6, 3)) + 0.5, np.pad(np.ones((1, 2, 2), bool),
                                                             ((0, 0), (2, 2), (2, 2))))
  np.testing.assert_allclose(filled, 0.5, atol=1e-6)          # a flat field stays flat


# ------------------------------------------------------------------------------------ programs


def test_invert_then_edit_write_their_outputs(world):
  out = str(world["base"] / "inv")
  s = invert(resolve(InvertConfig, generator=world["gen_dir"], alpha=world["alpha"],
                     images=world["images"], out=out, batch=1, projector__steps=20))
  assert s["inverted"] == 2 and set(s["psnr"]) == {"a", "b"}
  assert s["seconds_per_image"] > 0 and np.isfinite(s["psnr_mean"])
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["psnr"] == s["psnr"]
  mask = np.asarray(Image.open(os.path.join(out, "masks", "b.png")))
  assert mask.shape == (13, 20) and set(np.unique(mask)) <= {0, 255}
  assert np.load(os.path.join(out, "latents", "a.npy")).shape == (world["gen"].module.style_dim,)
  assert Image.open(os.path.join(out, "recon", "a.png")).size == (SIZE, SIZE)
  assert not [p for p in os.listdir(world["base"]) if ".tmp-" in p]

  assert s["sources"] == {"a": {"file": os.path.abspath(os.path.join(world["images"], "a.png")),
                                "size": [SIZE, SIZE]},
                          "b": {"file": os.path.abspath(os.path.join(world["images"], "b.png")),
                                "size": [13, 20]}}

  # The original of an inversion's edit is the photo, at its own size (b: 13 x 20).
  e_out = str(world["base"] / "edit")
  e = edit(resolve(EditConfig, generator=world["gen_dir"], alpha=world["alpha"], latents=out,
                   direction=1, strength=2.0, out=e_out, batch=2, dilate=0))
  assert e["original"] == "photo" and "true_background_psnr" not in e
  p = e["leakage_psnr"]
  assert set(p) == {"naive", "preserved", "preserved_by_completion"}
  assert set(p["preserved_by_completion"]) == {"g_bg", "inpaint"}
  assert p["preserved"] == p["preserved_by_completion"]["inpaint"]
  for d in ("original", "masks", "naive", "preserved", "background", "edited_masks"):
    assert sorted(os.listdir(os.path.join(e_out, d))) == ["a.png", "b.png"]
    assert Image.open(os.path.join(e_out, d, "b.png")).size == (20, 13)
  for n in ("a", "b"):
    photo = np.asarray(Image.open(os.path.join(world["images"], f"{n}.png")))
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(e_out, "original",
                                                                     f"{n}.png"))), photo)
    # Outside the completed region and the edit's alpha, the preserved edit is the photo.
    pres = np.asarray(Image.open(os.path.join(e_out, "preserved", f"{n}.png")), np.int32)
    bg = np.asarray(Image.open(os.path.join(e_out, "background", f"{n}.png")), np.int32)
    assert (np.abs(bg - photo).max(-1) == 0).mean() > 0.3
    assert np.abs(pres - photo).max() > 0   # the edit is there
  # Bare latents (no record of the photos) keep G(w) as the original: the inversion's recon.
  bare = world["base"] / "bare"
  bare.mkdir()
  shutil.copytree(os.path.join(out, "latents"), bare / "latents")
  shutil.copytree(os.path.join(out, "noise"), bare / "noise")
  b_out = str(world["base"] / "edit_bare")
  e = edit(resolve(EditConfig, generator=world["gen_dir"], alpha=world["alpha"],
                   latents=str(bare), direction=1, strength=2.0, out=b_out, batch=2))
  assert e["original"] == "G(w)"
  recon = np.asarray(Image.open(os.path.join(out, "recon", "a.png")), np.int32)
  orig = np.asarray(Image.open(os.path.join(b_out, "original", "a.png")), np.int32)
  assert np.abs(recon - orig).max() <= 1
  # --images: a split with masks/ and backgrounds/ scores the edit against the true background.
  split = world["base"] / "split"
  for sub in ("images", "masks", "backgrounds"):
    (split / sub).mkdir(parents=True)
  for n in ("a", "b"):
    photo = np.asarray(Image.open(os.path.join(world["images"], f"{n}.png")))
    Image.fromarray(photo).save(split / "images" / f"{n}.png")
    Image.fromarray(photo).save(split / "backgrounds" / f"{n}.png")
    Image.fromarray(np.full(photo.shape[:2], 255, np.uint8)).save(split / "masks" / f"{n}.png")
  t = edit(resolve(EditConfig, generator=world["gen_dir"], alpha=world["alpha"], latents=out,
                   images=str(split), direction=1, strength=2.0, out=str(world["base"] / "e3"),
                   batch=2))
  tb = t["true_background_psnr"]
  # The masks cover every pixel, so the vacated region is the whole edit background.
  assert tb["vacated"] == tb["edit_background"] and 0 < tb["vacated"]["pixels"] <= SIZE ** 2 + 13 * 20
  s2 = edit(resolve(EditConfig, generator=world["gen_dir"], alpha=world["alpha"], seeds="3,4",
                    out=str(world["base"] / "edit_seeds"), strength=-2.0))
  assert s2["edited"] == 2 and s2["original"] == "G(w)"


def test_a_student_mask_of_the_photo_joins_the_completed_region():
  """B is completed where A's mask of the inversion or the student's mask of the photo is above
  --fill_threshold (dilated); elsewhere B is the photo itself."""
  from l4f_jax.programs.edit import compose
  n = 12
  ramp = np.linspace(-0.8, 0.8, n, dtype=np.float32)
  photo = np.repeat(np.stack([np.tile(ramp, (n, 1))] * 3, -1)[None], 1, 0)[0]
  block = np.zeros((n, n), bool)
  block[4:8, 4:8] = True
  photo[block] = [1.0, -1.0, -1.0]                       # the photo's object, missed by A
  zeros = np.zeros((1, n, n, 1), np.float32)
  r = {"alpha": zeros, "alpha_edit": zeros, "edited": np.zeros((1, n, n, 3), np.float32),
       "g_bg": np.zeros((1, n, n, 3), np.float32)}
  cfg = resolve(EditConfig, out="unused", dilate=1)
  alone = compose(r, 0, photo, cfg)
  np.testing.assert_array_equal(alone["background_inpaint"], photo)   # nothing to complete
  joined = compose(r, 0, photo, cfg, photo_alpha=block.astype(np.float32))
  grown = np.zeros_like(block)
  grown[3:9, 3:9] = True
  b = joined["background_inpaint"]
  np.testing.assert_array_equal(b[~grown], photo[~grown])
  np.testing.assert_allclose(b[block], np.tile(ramp, (n, 1))[block][:, None].repeat(3, 1),
                             atol=0.02)                  # the ramp, not the object
  np.testing.assert_array_equal(joined["background_g_bg"][grown], 0.0)


def test_score_truth_regions():
  """Region (i) is where the colour oracle sees no object in the naive edit, (ii) its part inside
  the photo's exact mask; squared errors on the [0, 1] scale, 3 channels."""
  from l4f_jax.programs.edit import score_truth
  h, w = 4, 5
  edited = np.full((h, w, 3), -0.5, np.float32)        # grey: background by the oracle
  edited[0, 0] = [1.0, -1.0, -1.0]                     # red: object
  exact = np.zeros((h, w), bool)
  exact[0, :3] = True                                  # the photo's object
  truth = np.zeros((h, w, 3), np.float32)
  item = {"edited": edited, "preserved_inpaint": np.zeros((h, w, 3), np.float32),
          "preserved_g_bg": truth + 0.2}
  item["original"] = np.where(exact[..., None], np.float32([1.0, -1.0, -1.0]), truth)
  sc = score_truth(item, exact, truth, margin=0)
  assert sc["edit_background"]["count"] == 3 * (h * w - 1) and sc["vacated"]["count"] == 3 * 2
  assert sc["edit_background"]["inpaint"] == 0
  np.testing.assert_allclose(sc["edit_background"]["naive"], 3 * (h * w - 1) * 0.25 ** 2)
  np.testing.assert_allclose(sc["vacated"]["g_bg"], 3 * 2 * 0.1 ** 2, rtol=1e-5)
  assert sc["photo_itself"] == {"photo": 0.0, "count": 3 * (h * w - 3)}
  # A 1 px margin leaves out the object's rim: (0, 0)'s 3 x 3 neighbourhood.
  sc = score_truth(item, exact, truth, margin=1)
  assert sc["edit_background"]["count"] == 3 * (h * w - 4) and sc["vacated"]["count"] == 3 * 1
  assert sc["photo_itself"]["count"] == 3 * (h * w - 8)


def test_bad_inputs_are_one_line_errors(world):
  base = world["base"]
  busy = base / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("x")
  kw = dict(generator=world["gen_dir"], alpha=world["alpha"], images=world["images"])
  for overwrite in (False, True):  # a folder of the user's is never replaced
    with pytest.raises(UserError, match="holds files that invert did not write .e.g. keep.txt"):
      invert(resolve(InvertConfig, out=str(busy), overwrite=overwrite, **kw))
  assert (busy / "keep.txt").read_text() == "x"
  with pytest.raises(UserError, match="--alpha=.*trained on a generator with other weights"):
    invert(resolve(InvertConfig, **dict(kw, alpha=world["other_alpha"]), out=str(base / "o1")))
  empty = base / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="--images=.*no image files"):
    invert(resolve(InvertConfig, **dict(kw, images=str(empty)), out=str(base / "o2")))
  with pytest.raises(UserError, match="--steps=0 must be >= 1"):
    resolve(InvertConfig, out=str(base / "o3"), projector__steps=0, **kw)
  ekw = dict(generator=world["gen_dir"], alpha=world["alpha"], out=str(base / "e1"))
  with pytest.raises(UserError, match="exactly one of --latents"):
    edit(resolve(EditConfig, **ekw))
  with pytest.raises(UserError, match="--seeds='1,x'"):
    edit(resolve(EditConfig, seeds="1,x", **ekw))
  bad = base / "bad_latents"
  bad.mkdir()
  np.save(bad / "z.npy", np.zeros(7, np.float32))
  with pytest.raises(UserError, match="z.npy holds shape"):
    edit(resolve(EditConfig, latents=str(bad), **ekw))
  with pytest.raises(UserError, match="--direction=99 must be <"):
    edit(resolve(EditConfig, seeds="1", direction=99, **ekw))
  for e in ("o1", "o2", "e1"):
    assert not (base / e).exists()
