"""GAN inversion of images into a frozen StyleGAN2 (the math of rosinality's `projector.py`).

  state = init_state(keys, w_avg, generator=G, cfg=cfg)
  state, terms = project(state, target, keys, g_params, sigma_w, generator=G, cfg=cfg,
                         loss_fn=pixel_gradient_loss)
  image, features = synthesize(state.latent, state.noise, g_params, generator=G)

As rosinality's projector (rosinality/stylegan2-pytorch, projector.py): the latent starts at w-bar, as w [B, D] or
as w+ [B, n_latent, D] (w-bar repeated), every noise map starts as N(0, 1), and both are optimised
with Adam for `steps` steps. At step i (t = i / steps):

  lr_i      = lr * rampdown * rampup, rampdown = 0.5 - 0.5 cos(pi min(1, (1 - t) / 0.25)),
              rampup = min(1, t / 0.05)
  latent_n  = latent + N(0, 1) * sigma_w * 0.05 * max(0, 1 - t / 0.75)^2       (latent jitter)
  x         = G(latent_n, noise)
  loss      = loss_fn(x, target) + noise_regularize * R(noise) + mse * mean((x - target)^2)
  R(noise)  = sum over maps n, and their 2x2 average-pooled versions down to 8x8, of
              mean(n * roll(n, 1, W))^2 + mean(n * roll(n, 1, H))^2
  after the Adam update every noise map is renormalised to mean 0, std 1 (unbiased, as torch).

Each image is optimised on its own: every term is computed per image (`loss_fn` is vmapped over the
batch with one image per call) and the batch objective is their sum, so an image's result does not
depend on the batch it shares or on how the batch is sharded. Its random draws (initial noise maps,
latent jitter of every step) come from its own key.

The image loss is pluggable: any `loss_fn(x, target) -> scalar` on NHWC images in [-1, 1] (called
with N = 1). No pretrained perceptual network (LPIPS needs VGG / AlexNet weights) is assumed:
  pixel_gradient_loss   (default) squared error of the pixels and of the horizontal and vertical
                        finite differences, on an average-pooled pyramid down to 8x8
  d_feature_loss(D, p)  LPIPS-like distance of the project's own discriminator's block outputs
                        (channel-normalised), plus the pixel term
A user with LPIPS weights passes `lambda x, t: lpips(x, t)` (its JAX port) instead.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from l4f_jax.config import option
from l4f_jax.models.stylegan2 import Discriminator, Generator, noise_shapes, num_latents

ImageLoss = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
LATENT_SPACES = ("w", "w+")

_NOISE_STREAM, _JITTER_STREAM = 0, 1  # fold_in streams of an image's key


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  """Hyper-parameters of the inversion; defaults follow rosinality's projector except `steps`
  (1000 there) and `latent` (w there too, w+ with --w_plus; here w gives the better masks: on the
  built-in world w+ fits the pixels better but leaves the latent region where A was trained)."""
  steps: int = option(200, "Optimisation steps per image.", ge=1)
  lr: float = option(0.1, "Peak Adam learning rate (ramped up over the first 5 %, cosine-ramped "
                     "down over the last 25 %).", gt=0)
  latent: str = option("w", "Latent space: w (one style vector) or w+ (one per layer).",
                       choices=LATENT_SPACES)
  noise_regularize: float = option(1e5, "Weight of the noise-map autocorrelation penalty.", ge=0)
  mse: float = option(0.0, "Weight of an extra plain pixel MSE term.", ge=0)
  latent_noise: float = option(0.05, "Latent jitter strength at t = 0, in units of sigma_w.", ge=0)
  noise_ramp: float = option(0.75, "Fraction of the steps over which the jitter decays to 0.",
                             gt=0, le=1)
  lr_rampup: float = option(0.05, "Fraction of the steps of the lr ramp-up.", gt=0, le=1)
  lr_rampdown: float = option(0.25, "Fraction of the steps of the cosine lr ramp-down.", gt=0,
                              le=1)
  optimize_noise: bool = option(True, "Optimise the noise maps too (else they stay at their "
                                "initial N(0, 1) draw).")


@flax.struct.dataclass
class ProjectionState:
  """What the optimisation carries: latent [B, D] (w) or [B, n_latent, D] (w+), the noise maps
  (rosinality order, [B, r, r, 1] each), Adam's state and the step counter."""
  step: jnp.ndarray
  latent: jnp.ndarray
  noise: list
  opt_state: Any


# ------------------------------------------------------------------------------------ schedules


def learning_rate(t, lr: float, rampdown: float = 0.25, rampup: float = 0.05):
  """rosinality's `get_lr`: lr * (0.5 - 0.5 cos(pi min(1, (1 - t) / rampdown)))
  * min(1, t / rampup)."""
  ramp = jnp.minimum(1.0, (1.0 - t) / rampdown)
  ramp = 0.5 - 0.5 * jnp.cos(ramp * math.pi)
  return lr * ramp * jnp.minimum(1.0, t / rampup)


def jitter_strength(t, latent_std, strength: float = 0.05, ramp: float = 0.75):
  """Std of the latent jitter at t: sigma_w * strength * max(0, 1 - t / ramp)^2."""
  return latent_std * strength * jnp.square(jnp.maximum(0.0, 1.0 - t / ramp))


def latent_std(generator: Generator, g_params, key, n: int):
  """(w-bar [1, D], sigma_w) over n mapped z: sigma_w = sqrt(sum ||w - w-bar||^2 / n), as the
  projector computes it. With the key of `training.w_avg`, w-bar is that one w-bar."""
  z = jax.random.normal(key, (n, generator.style_dim))
  w = generator.apply({"params": g_params}, z, method=Generator.mapping)
  mean = jnp.mean(w, axis=0, keepdims=True)
  return mean, jnp.sqrt(jnp.sum(jnp.square(w - mean)) / n)


# --------------------------------------------------------------------------------- noise maps


def _pool2(x):
  """2x2 average pooling of NHWC maps."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def noise_regularize(noise: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Per-image autocorrelation penalty [B] of the noise maps (module docstring R(noise))."""
  total = 0.0
  for n in noise:
    while True:
      total = total + (jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=2), axis=(1, 2, 3)))
                       + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=1), axis=(1, 2, 3))))
      if n.shape[1] <= 8:
        break
      n = _pool2(n)
  return total


def normalize_noise(noise: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
  """Every map of every image to mean 0 and (unbiased) std 1."""
  out = []
  for n in noise:
    mean = jnp.mean(n, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(n, axis=(1, 2, 3), keepdims=True, ddof=1)
    out.append((n - mean) / std)
  return out


# -------------------------------------------------------------------------------- image losses


def image_pyramid(x, min_size: int = 8) -> list[jnp.ndarray]:
  """[x, pool2(x), pool2(pool2(x)), ...] down to `min_size` (or the smallest even size)."""
  levels = [x]
  while levels[-1].shape[1] > min_size and levels[-1].shape[1] % 2 == 0 \
      and levels[-1].shape[2] % 2 == 0:
    levels.append(_pool2(levels[-1]))
  return levels


def pixel_gradient_loss(x, target, *, gradient_weight: float = 1.0, min_size: int = 8):
  """Scalar: sum over pyramid levels of mean (x - target)^2 + gradient_weight * (mean of the
  squared differences of the horizontal and vertical finite differences)."""
  total = 0.0
  for a, b in zip(image_pyramid(x, min_size), image_pyramid(target, min_size)):
    d = a - b
    total = total + jnp.mean(jnp.square(d))
    if gradient_weight:
      total = total + gradient_weight * (jnp.mean(jnp.square(d[:, 1:] - d[:, :-1]))
                                         + jnp.mean(jnp.square(d[:, :, 1:] - d[:, :, :-1])))
  return total


def d_feature_loss(discriminator: Discriminator, d_params, *, pixel_weight: float = 1.0
                   ) -> ImageLoss:
  """An LPIPS-like loss from the project's own discriminator: for each residual block output of D
  (the features before minibatch stddev), the mean over positions of the squared distance of the
  channel-normalised feature vectors, summed over blocks; plus `pixel_weight` times
  `pixel_gradient_loss`."""
  def features(x):
    _, state = discriminator.apply(
        {"params": d_params}, x, capture_intermediates=lambda m, _: m.name is not None and
        m.name.startswith("convs_") and m.name != "convs_0" and len(m.scope.path) == 1,
        mutable=["intermediates"])
    inter = state["intermediates"]
    return [inter[k]["__call__"][0] for k in sorted(inter, key=lambda s: int(s.split("_")[1]))]

  def unit(f):
    return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + 1e-10)

  def loss(x, target):
    total = 0.0
    for fx, ft in zip(features(x), features(target)):
      total = total + jnp.mean(jnp.sum(jnp.square(unit(fx) - unit(ft)), axis=-1))
    return total + (pixel_weight * pixel_gradient_loss(x, target) if pixel_weight else 0.0)
  return loss


def psnr(x, target, axis=(1, 2, 3)):
  """PSNR in dB of images as saved: both clipped to [-1, 1], peak = the range 2 (i.e. on the
  [0, 1] scale)."""
  mse = jnp.mean(jnp.square(jnp.clip(x, -1, 1) - jnp.clip(target, -1, 1)), axis=axis)
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


# ---------------------------------------------------------------------------------- projection


def optimizer(cfg: ProjectorConfig) -> optax.GradientTransformation:
  """Adam (torch defaults) with the projector's lr schedule at t = count / steps."""
  return optax.adam(lambda count: learning_rate(count / cfg.steps, cfg.lr, cfg.lr_rampdown,
                                                cfg.lr_rampup))


def _trainable(latent, noise, cfg: ProjectorConfig):
  return {"latent": latent, "noise": list(noise) if cfg.optimize_noise else []}


def init_state(keys, w_avg, *, generator: Generator, cfg: ProjectorConfig) -> ProjectionState:
  """Start of the projection of len(keys) images: latent = w-bar (repeated per layer for w+),
  noise maps N(0, 1) from each image's key."""
  b = keys.shape[0]
  latent = jnp.broadcast_to(w_avg.reshape(1, -1), (b, generator.style_dim))
  if cfg.latent == "w+":
    latent = jnp.broadcast_to(latent[:, None], (b, num_latents(generator.size),
                                                generator.style_dim))
  noise = _initial_noise(keys, generator.size)
  return ProjectionState(step=jnp.zeros((), jnp.int32), latent=latent, noise=noise,
                         opt_state=optimizer(cfg).init(_trainable(latent, noise, cfg)))


def _initial_noise(keys, size: int) -> list[jnp.ndarray]:
  shapes = noise_shapes(size, 1)

  def one(key):
    ks = jax.random.split(jax.random.fold_in(key, _NOISE_STREAM), len(shapes))
    return [jax.random.normal(k, s[1:]) for k, s in zip(ks, shapes)]
  return jax.vmap(one)(keys)


def objective(latent, noise, target, *, generator: Generator, g_params, cfg: ProjectorConfig,
              loss_fn: ImageLoss):
  """(sum over images of the per-image objective, per-image terms) at the given latent."""
  image, _ = generator.apply({"params": g_params}, latent, input_is_latent=True, noise=noise)
  per_image = jax.vmap(lambda a, b: loss_fn(a[None], b[None]))(image, target)
  reg = noise_regularize(noise)
  mse = jnp.mean(jnp.square(image - target), axis=(1, 2, 3))
  total = per_image + cfg.noise_regularize * reg + cfg.mse * mse
  return jnp.sum(total), dict(loss=total, image_loss=per_image, noise_reg=reg, mse=mse)


def project_step(state: ProjectionState, target, keys, g_params, latent_sigma, *,
                 generator: Generator, cfg: ProjectorConfig, loss_fn: ImageLoss):
  """One step of the projection of a batch (module docstring). Returns (state, per-image terms)."""
  t = state.step / cfg.steps
  strength = jitter_strength(t, latent_sigma, cfg.latent_noise, cfg.noise_ramp)
  jitter = jax.vmap(lambda k: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(k, _JITTER_STREAM), state.step),
      state.latent.shape[1:]))(keys)
  fixed_noise = state.noise

  def f(params):
    noise = params["noise"] if cfg.optimize_noise else fixed_noise
    return objective(params["latent"] + strength * jitter, noise, target, generator=generator,
                     g_params=g_params, cfg=cfg, loss_fn=loss_fn)

  params = _trainable(state.latent, state.noise, cfg)
  (_, terms), grads = jax.value_and_grad(f, has_aux=True)(params)
  updates, opt_state = optimizer(cfg).update(grads, state.opt_state, params)
  params = optax.apply_updates(params, updates)
  noise = normalize_noise(params["noise"]) if cfg.optimize_noise else state.noise
  return ProjectionState(step=state.step + 1, latent=params["latent"], noise=noise,
                         opt_state=opt_state), terms


def project(state: ProjectionState, target, keys, g_params, latent_sigma, *,
            generator: Generator, cfg: ProjectorConfig, loss_fn: ImageLoss,
            steps: Optional[int] = None):
  """`steps` (default cfg.steps) projection steps in one loop; returns (state, per-image terms of
  `objective` at the final latent and noise, without jitter)."""
  n = cfg.steps if steps is None else steps
  step = lambda _, s: project_step(s, target, keys, g_params, latent_sigma, generator=generator,
                                   cfg=cfg, loss_fn=loss_fn)[0]
  state = jax.lax.fori_loop(0, n, step, state)
  _, terms = objective(state.latent, state.noise, target, generator=generator, g_params=g_params,
                       cfg=cfg, loss_fn=loss_fn)
  return state, terms


def synthesize(latent, noise, g_params, *, generator: Generator, background: bool = False,
               background_mode: str = "auto"):
  """(image, features) of G (or G_bg) at latent w [B, D] / w+ [B, n_latent, D] with `noise`."""
  return generator.apply({"params": g_params}, latent, input_is_latent=True, noise=noise,
                         background=background, background_mode=background_mode)
