"""The student segmenter: U-Net shapes and size, the loss against a NumPy reference, learning on a
fixed batch, the sharded step == the single-device step, and the host-side augmentations."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l4f_jax.method import student
from l4f_jax.models.unet import UNet, level_widths, upsample2_bilinear
from l4f_jax.system import sharding
from l4f_jax.system.augment import AugmentConfig, augment_batch

TINY = UNet(base_width=4, depth=2, blocks_per_level=1, max_width=8, norm_groups=2)


def _compile(fn, *args):
  """jit(fn) compiled for `args`, with the tests' cheap XLA flags (conftest.py, tiny_world.FAST_XLA;
  static config goes in via partial)."""
  return jax.jit(fn).lower(*args).compile()


def _params(model, shape, key=0):
  args = (jax.random.key(key), jnp.zeros(shape, jnp.float32))
  return _compile(model.init, *args)(*args)["params"]


def _apply(model, params, x):
  return _compile(lambda p, x: model.apply({"params": p}, x), params, x)(params, x)


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# -------------------------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("depth,h,w,norm", [(1, 6, 10, "group"), (2, 8, 12, "none"),
                                            (3, 16, 24, "group")])
def test_unet_output_shape_and_dtype(depth, h, w, norm):
  model = UNet(base_width=4, depth=depth, blocks_per_level=1, max_width=16, norm=norm)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, h, w, 3)), jnp.float32)
  params = _params(model, x.shape)
  y = _apply(model, params, x)
  assert y.shape == (2, h, w, 1) and y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y))) and np.std(np.asarray(y)) > 0


def test_unet_any_size_and_bfloat16():
  """Fully convolutional: the same weights run at another size; bfloat16 compute returns float32
  logits close to the float32 ones."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 8, 3)), jnp.float32)
  params = _params(TINY, (1, 8, 8, 3))
  y = np.asarray(_apply(TINY, params, x))
  assert y.shape == (2, 16, 8, 1)
  y16 = _apply(TINY.clone(dtype=jnp.bfloat16), params, x)
  assert y16.dtype == jnp.float32
  assert np.max(np.abs(np.asarray(y16) - y)) < 0.05 * (1 + np.max(np.abs(y)))


def test_unet_rejects_indivisible_sizes():
  with pytest.raises(ValueError, match="divisible by 8"):
    UNet(depth=3).init(jax.random.key(0), jnp.zeros((1, 20, 16, 3)))


def test_unet_default_size():
  """About 300k parameters: widths 16-32-64-64, the count by hand below."""
  model = UNet()
  assert level_widths(16, 3, 64) == [16, 32, 64, 64]
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  conv = lambda cin, cout: 9 * cin * cout
  enc = conv(3, 16) + conv(16, 16) + conv(16, 32) + conv(32, 32) + conv(32, 64) + 3 * conv(64, 64)
  up = (64 * 64 + 64) + (64 * 32 + 32) + (32 * 16 + 16)
  dec = conv(128, 64) + conv(64, 64) + conv(64, 32) + conv(32, 32) + conv(32, 16) + conv(16, 16)
  norms = 2 * 2 * (16 + 32 + 64 + 64 + 64 + 32 + 16)
  assert _count(shapes) == enc + up + dec + norms + 16 + 1
  assert 1e5 <= _count(shapes) <= 3.1e5


def test_upsample_equals_jax_bilinear_resize():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 7, 3)), jnp.float32)
  ref = jax.image.resize(x, (2, 10, 14, 3), "bilinear")
  np.testing.assert_allclose(upsample2_bilinear(x), ref, atol=1e-6)


# --------------------------------------------------------------------------------------------- loss


def _np_loss(z, a, *, dice_weight, hard_weight, ignore, weights, eps=1.0):
  z, a = z.astype(np.float64), a.astype(np.float64)
  t = (1 - hard_weight) * a + hard_weight * (a > 0.5)
  w = np.ones_like(a) if weights is None else np.broadcast_to(weights, a.shape).astype(np.float64)
  if ignore:
    w = w * ~((a > 0.1) & (a < 0.9))
  p = 1 / (1 + np.exp(-z))
  bce_px = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  ax = (1, 2, 3)
  bce = (w * bce_px).sum(ax) / np.maximum(w.sum(ax), 1)
  dice = 1 - (2 * (w * p * t).sum(ax) + eps) / ((w * (p + t)).sum(ax) + eps)
  return bce.mean() + dice_weight * dice.mean(), bce.mean(), dice.mean()


@pytest.mark.parametrize("dice_weight,hard_weight,ignore,use_weights", [
    (0.0, 0.0, False, False), (0.5, 0.0, False, False), (0.5, 0.3, True, False),
    (1.0, 1.0, True, True)])
def test_loss_equals_numpy_reference(dice_weight, hard_weight, ignore, use_weights):
  rng = np.random.default_rng(2)
  z = rng.normal(0, 3, (3, 6, 5, 1)).astype(np.float32)
  a = rng.choice([0.0, 0.02, 0.3, 0.5, 0.7, 0.97, 1.0], size=z.shape).astype(np.float32)
  a[2] = 0.5  # an image whose pixels are all undecided: weight 0 everywhere when ignored
  weights = rng.uniform(0, 2, (3, 6, 5, 1)).astype(np.float32) if use_weights else None
  loss, terms = student.student_loss(jnp.asarray(z), jnp.asarray(a), dice_weight=dice_weight,
                                     hard_weight=hard_weight, ignore_undecided=ignore,
                                     weights=None if weights is None else jnp.asarray(weights))
  ref, bce, dice = _np_loss(z, a, dice_weight=dice_weight, hard_weight=hard_weight, ignore=ignore,
                            weights=weights)
  np.testing.assert_allclose([loss, terms["bce"], terms["dice"]], [ref, bce, dice], rtol=1e-5)


def test_soft_bce_is_minimised_by_the_soft_target():
  """Proper scoring: the BCE gradient vanishes at logits = logit(alpha), and only there."""
  a = jnp.asarray(np.random.default_rng(3).uniform(0.05, 0.95, (2, 4, 4, 1)), jnp.float32)
  grad = jax.grad(lambda z: student.student_loss(z, a)[0])
  np.testing.assert_allclose(grad(jnp.log(a / (1 - a))), 0, atol=1e-7)
  assert np.all(np.abs(grad(jnp.zeros_like(a))) > 0)


# ----------------------------------------------------------------------------------------- training


def _blobs(n, size, seed):
  """Images whose soft alpha is a disc (smooth edge); red-ish foreground on blue-ish background."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] + 0.5
  alphas, images = [], []
  for _ in range(n):
    cy, cx = rng.uniform(0.35 * size, 0.65 * size, 2)
    r = rng.uniform(0.2, 0.35) * size
    a = 1 / (1 + np.exp(-(r - np.hypot(yy - cy, xx - cx)) * 2))
    fg, bg = np.array([0.6, -0.2, -0.5]), np.array([-0.4, 0.0, 0.5])
    img = a[..., None] * fg + (1 - a[..., None]) * bg + rng.normal(0, 0.1, (size, size, 3))
    alphas.append(a[..., None])
    images.append(np.clip(img, -1, 1))
  return np.asarray(images, np.float32), np.asarray(alphas, np.float32)


def test_overfits_a_fixed_batch():
  model = UNet(base_width=8, depth=2, blocks_per_level=1, max_width=16)
  images, alphas = _blobs(4, 32, seed=4)
  hp = student.StudentHParams(lr=2e-2, dice_weight=0.5)
  state = student.init_student_state(hp, _params(model, images.shape))
  step = functools.partial(student.student_step, model=model, hp=hp)
  step = _compile(step, state, images, alphas)
  history = []
  for _ in range(30):
    state, m = step(state, images, alphas)
    history.append(jax.device_get(m))
  assert int(state.step) == 30
  assert history[-1]["loss"] < 0.5 * history[0]["loss"]
  p = _compile(functools.partial(student.predict_alpha, model=model), state.params, images)(
      state.params, images)
  assert p.shape == alphas.shape and float(p.min()) > 0 and float(p.max()) < 1
  pred, tgt = np.asarray(p) > 0.5, alphas > 0.5
  assert (pred & tgt).sum() / (pred | tgt).sum() > 0.9
  assert history[-1]["iou"] > 0.8 and history[-1]["pixel_acc"] > 0.9


def test_sharded_step_equals_single_device_step():
  """4 devices x 2 rows == 1 device x 8 rows, 2 steps. In float64: Adam's first steps move each
  parameter by ~lr * sign(grad), so float32 reduction-order rounding of near-zero gradient entries
  would show as lr-sized differences that hide nothing real."""
  assert len(jax.devices()) >= 4, "tests/conftest.py provides 4 fake CPU devices"
  hp = student.StudentHParams(lr=1e-3, dice_weight=0.5, ignore_undecided=True)
  images, alphas = _blobs(8, 16, seed=5)
  mesh = sharding.make_mesh(4)
  rep, shd = sharding.REPLICATED, sharding.SHARDED
  with jax.enable_x64(True):
    f64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)
    params = f64(jax.device_get(_params(TINY, (1, 16, 16, 3))))
    images, alphas = f64(images), f64(alphas)
    single = functools.partial(student.student_step, model=TINY, hp=hp)
    per_device = functools.partial(student.student_step, model=TINY, hp=hp, axis_name=sharding.AXIS)
    sharded = sharding.data_parallel(per_device, mesh, in_specs=(rep, shd, shd),
                                     out_specs=(rep, rep))
    results = []
    for fn in (single, sharded):
      state = student.init_student_state(hp, params)
      fn = _compile(fn, state, images, alphas)
      ms = []
      for i in range(2):
        state, m = fn(state, images[:, ::1 - 2 * i], alphas[:, ::1 - 2 * i])  # 2nd: flipped rows
        ms.append(m)
      results.append(jax.device_get((state, ms)))
  (s1, m1), (s4, m4) = results
  assert int(s4.step) == 2
  for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s4, m4))):
    np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64), rtol=1e-9,
                               atol=1e-11)
  assert 0 < m1[0]["iou"] < 1 and m1[0]["dice"] > 0


# ------------------------------------------------------------------------------------ augmentations


def _encoded(b=16, size=32, dtype=np.float32, seed=6):
  """A batch whose image colour encodes the alpha: red channel = alpha (other channels constant)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  alpha = np.stack([((yy < rng.integers(4, size)) & (xx < rng.integers(4, size)))
                    | (xx + yy < rng.integers(0, size)) for _ in range(b)]).astype(np.float32)
  alpha = alpha[..., None]
  image = np.concatenate([alpha, np.full_like(alpha, 0.25), np.full_like(alpha, 0.75)], -1)
  image = np.round(image * 255).astype(np.uint8) if dtype == np.uint8 else image * 2 - 1
  return dict(image=image.astype(dtype), alpha=alpha, label=np.arange(b))


def _red01(image):
  return image[..., :1] / 255 if image.dtype == np.uint8 else (image[..., :1] + 1) / 2


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_geometric_augmentations_keep_image_and_alpha_aligned(dtype):
  batch = _encoded(dtype=dtype)
  out = augment_batch(batch, AugmentConfig(flip=True, crop_scale=0.3), seed=1, step=3)
  tol = 1e-6 if dtype == np.float32 else 0.5 / 255 + 1e-6
  assert out["image"].dtype == dtype and out["alpha"].dtype == np.float32
  assert out["image"].shape == batch["image"].shape and out["alpha"].shape == batch["alpha"].shape
  assert np.max(np.abs(_red01(out["image"]) - out["alpha"])) <= tol
  # Crops zoom in: every row changed, soft edges appear, other channels and entries untouched.
  assert all(np.any(out["alpha"][i] != batch["alpha"][i]) for i in range(16))
  assert np.any((out["alpha"] > 0.01) & (out["alpha"] < 0.99))
  np.testing.assert_array_equal(out["label"], batch["label"])
  np.testing.assert_allclose(out["image"][..., 1:], batch["image"][..., 1:], atol=1)


def test_flips_alone_are_exact_mirrors():
  batch = _encoded(b=32)
  out = augment_batch(batch, AugmentConfig(flip=True), seed=0, step=0)
  flipped = [not np.array_equal(out["image"][i], batch["image"][i]) for i in range(32)]
  for i, f in enumerate(flipped):
    src = batch["image"][i, :, ::-1] if f else batch["image"][i]
    np.testing.assert_array_equal(out["image"][i], src)
    np.testing.assert_array_equal(out["alpha"][i], batch["alpha"][i, :, ::-1] if f
                                  else batch["alpha"][i])
  assert 6 <= sum(flipped) <= 26


ALL_ON = AugmentConfig(flip=True, crop_scale=0.5, color_jitter=0.3, blur=1.0, jpeg_quality=50,
                       noise=0.02)


def test_augmentations_are_deterministic_and_row_local():
  batch = _encoded(b=8, dtype=np.uint8)
  a = augment_batch(batch, ALL_ON, seed=3, step=7)
  b = augment_batch(batch, ALL_ON, seed=3, step=7)
  for k in ("image", "alpha"):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["image"], augment_batch(batch, ALL_ON, seed=3, step=8)["image"])
  assert not np.array_equal(a["image"], augment_batch(batch, ALL_ON, seed=4, step=7)["image"])
  # Two hosts each augmenting their half (first_row = their offset) give the single-host batch.
  half = lambda lo: {k: v[lo:lo + 4] for k, v in batch.items()}
  parts = [augment_batch(half(lo), ALL_ON, seed=3, step=7, first_row=lo) for lo in (0, 4)]
  for k in ("image", "alpha"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), a[k])


def test_photometric_augmentations_leave_alpha_unchanged():
  batch = _encoded(b=8)
  cfg = AugmentConfig(flip=False, color_jitter=0.4, blur=1.5, jpeg_quality=30, jpeg_prob=1.0,
                      noise=0.05)
  out = augment_batch(batch, cfg, seed=0, step=1)
  np.testing.assert_array_equal(out["alpha"], batch["alpha"])
  assert not np.array_equal(out["image"], batch["image"])
  assert out["image"].min() >= -1 and out["image"].max() <= 1


def _smooth(b=8, size=32):
  yy, xx = np.mgrid[:size, :size] / size
  img = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)], -1) * 0.8
  return dict(image=np.repeat(img[None], b, 0).astype(np.float32),
              alpha=np.zeros((b, size, size, 1), np.float32))


@pytest.mark.parametrize("cfg,bound", [
    (AugmentConfig(flip=False, jpeg_quality=60, jpeg_prob=1.0), 0.03),
    (AugmentConfig(flip=False, blur=1.0), 0.02)])
def test_jpeg_and_blur_change_the_image_by_a_bounded_amount(cfg, bound):
  """Mean absolute change in [0, 1] units: nonzero, but small on a smooth image."""
  batch = _smooth()
  out = augment_batch(batch, cfg, seed=2, step=0)
  diff = np.abs(out["image"] - batch["image"]).mean((1, 2, 3)) / 2
  assert np.all(diff < bound) and diff.max() > 1e-4, diff


def test_blur_keeps_a_constant_image():
  batch = dict(image=np.full((4, 16, 16, 3), 0.3, np.float32),
               alpha=np.ones((4, 16, 16, 1), np.float32))
  out = augment_batch(batch, AugmentConfig(flip=False, blur=2.0), seed=0, step=0)
  np.testing.assert_allclose(out["image"], 0.3, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_all_off_is_identity(dtype):
  batch = _encoded(b=4, dtype=dtype)
  out = augment_batch(batch, AugmentConfig(flip=False), seed=0, step=0)
  assert out["image"].dtype == dtype
  for k in batch:
    np.testing.assert_array_equal(out[k], batch[k])
