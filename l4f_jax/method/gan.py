"""StyleGAN2 training (rosinality `train.py` recipe) as pure per-device functions.

Used to pretrain the project's small generator for its built-in world. The recipe:
  D:  softplus(-D(x)) + softplus(D(G(z)))                         every step
  R1: (gamma/2) * d_reg_every * E|grad_x D(x)|^2 + 0 * D(x)[0]     lazily, every d_reg_every steps
  G:  softplus(-D(G(z)))                                           every step, style mixing p = 0.9
  PL: path-length regularisation every g_reg_every steps           optional (pl_weight > 0)
  EMA of G's parameters with a half-life of `ema_kimg` thousand images.
Adam with beta1 = 0 and rosinality's lazy-regularisation scaling c = k / (k + 1) of lr and beta2.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from l4f_jax.models.stylegan2 import (Discriminator, Generator, discriminate_in_chunks, make_noise,
                                      num_latents)
from l4f_jax.method.losses import d_logistic_loss, r1_penalty
from l4f_jax.config import option
from l4f_jax.method.optim import apply_update, device_mean, lazy_adam


@dataclasses.dataclass(frozen=True)
class GANConfig:
  lr: float = option(0.002, "Base learning rate.", gt=0)
  r1: float = option(10.0, "R1 weight gamma.", ge=0)
  d_reg_every: int = option(16, "Lazy R1 interval.", ge=1)
  g_reg_every: int = option(4, "Lazy path-length interval (and Adam scaling).", ge=1)
  mixing: float = option(0.9, "Style-mixing probability.", ge=0, le=1)
  ema_kimg: float = option(10.0, "EMA half-life of G in thousands of images.", gt=0)
  pl_weight: float = option(0.0, "Path-length regularisation weight (rosinality: 2; 0 = off).",
                            ge=0)
  pl_batch_shrink: int = option(2, "Path-length batch = batch // this.", ge=1)
  pl_decay: float = option(0.01, "Decay of the mean path length.", gt=0, le=1)
  stddev_chunks: int = option(1, "Emulated devices per device.", flag=None, ge=1)


class GANState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  g_params: Any
  g_ema: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  mean_path_length: jnp.ndarray


def make_gan_optimizers(cfg: GANConfig):
  """(tx_g, tx_d): rosinality's lazy-regularisation Adam (b1 = 0, c = k / (k + 1))."""
  return lazy_adam(cfg.lr, cfg.g_reg_every), lazy_adam(cfg.lr, cfg.d_reg_every)


def init_gan_state(cfg: GANConfig, g_params, d_params) -> GANState:
  tx_g, tx_d = make_gan_optimizers(cfg)
  return GANState(step=jnp.zeros((), jnp.int32), g_params=g_params,
                  g_ema=jax.tree.map(jnp.copy, g_params), d_params=d_params,
                  g_opt_state=tx_g.init(g_params), d_opt_state=tx_d.init(d_params),
                  mean_path_length=jnp.zeros((), jnp.float32))


def mixed_latents(G: Generator, g_params, key, batch: int, prob: float):
  """rosinality `mixing_noise` + G's crossover: with probability `prob` the batch's w+ switches from
  w(z1) to w(z2) at one index drawn from [1, n_latent - 1]; otherwise w(z1) everywhere."""
  k1, k2, ku, ki = jax.random.split(key, 4)
  n = num_latents(G.size)
  z1 = jax.random.normal(k1, (batch, G.style_dim))
  z2 = jax.random.normal(k2, (batch, G.style_dim))
  w1 = G.apply({"params": g_params}, z1, method=Generator.mapping)
  w2 = G.apply({"params": g_params}, z2, method=Generator.mapping)
  inject = jnp.where(jax.random.uniform(ku) < prob, jax.random.randint(ki, (), 1, n), n)
  idx = jnp.arange(n)[None, :, None]
  return jnp.where(idx < inject, w1[:, None], w2[:, None])


def g_nonsaturating_loss(fake_pred):
  """Non-saturating G loss: E[softplus(-D(G(z)))]."""
  return jnp.mean(jax.nn.softplus(-fake_pred))


def path_length_penalty(gen_fn, latents, img_noise, mean_path_length, decay: float,
                        mean=lambda x: x):
  """Path-length penalty of the images `gen_fn(latents)` (rosinality `g_path_regularize`).

  img_noise: N(0, 1) draws shaped like the image, scaled here by 1 / sqrt(H W). Returns (penalty,
  new mean path length, path lengths [B], image); `mean` averages the batch mean of the lengths over
  devices (identity on one).
  """
  img, vjp = jax.vjp(gen_fn, latents)
  (grad,) = vjp(img_noise / math.sqrt(img.shape[1] * img.shape[2]))
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grad), axis=2), axis=1))
  pl_mean = mean_path_length + decay * (mean(jnp.mean(lengths)) - mean_path_length)
  penalty = jnp.mean(jnp.square(lengths - pl_mean))  # rosinality: the gradient flows through pl_mean
  return penalty, pl_mean, lengths, img


def gan_train_step(state: GANState, real, key, *, G: Generator, D: Discriminator, cfg: GANConfig,
                   do_r1: bool, do_pl: bool, axis_name: Optional[str] = None):
  """One rosinality iteration on the local batch. Returns (state, metrics)."""
  tx_g, tx_d = make_gan_optimizers(cfg)
  mean = device_mean(axis_name)
  b = real.shape[0]
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  kd, kdn, kg, kgn, kp, kpn, kpz = jax.random.split(key, 7)
  metrics = {}

  def gen(g_params, latents, nkey):
    img, _ = G.apply({"params": g_params}, latents, input_is_latent=True,
                     noise=make_noise(nkey, G.size, latents.shape[0], latents.dtype))
    return img

  # --- D step.
  fake = jax.lax.stop_gradient(gen(state.g_params, mixed_latents(G, state.g_params, kd, b, cfg.mixing), kdn))

  def d_loss_fn(d_params):
    real_pred = discriminate_in_chunks(D, d_params, real, chunks=cfg.stddev_chunks)
    fake_pred = discriminate_in_chunks(D, d_params, fake, chunks=cfg.stddev_chunks)
    return d_logistic_loss(real_pred, fake_pred), (real_pred, fake_pred)

  (d_loss, (real_pred, fake_pred)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
  d_params, d_opt = apply_update(tx_d, state.d_params, grads, state.d_opt_state, mean)
  metrics.update(d_loss=d_loss, real_score=jnp.mean(real_pred), fake_score=jnp.mean(fake_pred))

  # --- Lazy R1 (rosinality adds 0 * D(real)[0]; kept for parity of the graph only).
  if do_r1:
    def r1_loss_fn(d_params):
      penalty = r1_penalty(
          lambda x: discriminate_in_chunks(D, d_params, x, chunks=cfg.stddev_chunks), real)
      return cfg.r1 / 2 * penalty * cfg.d_reg_every, penalty

    (_, penalty), grads = jax.value_and_grad(r1_loss_fn, has_aux=True)(d_params)
    d_params, d_opt = apply_update(tx_d, d_params, grads, d_opt, mean)
    metrics["r1"] = penalty

  # --- G step.
  def g_loss_fn(g_params):
    latents = mixed_latents(G, g_params, kg, b, cfg.mixing)
    pred = discriminate_in_chunks(D, d_params, gen(g_params, latents, kgn), chunks=cfg.stddev_chunks)
    return g_nonsaturating_loss(pred)

  g_loss, grads = jax.value_and_grad(g_loss_fn)(state.g_params)
  g_params, g_opt = apply_update(tx_g, state.g_params, grads, state.g_opt_state, mean)
  metrics["g_loss"] = g_loss

  # --- Optional path-length regularisation.
  mean_path_length = state.mean_path_length
  if do_pl:
    pb = max(b // cfg.pl_batch_shrink, 1)

    def pl_loss_fn(g_params):
      latents = mixed_latents(G, g_params, kp, pb, cfg.mixing)
      img_noise = jax.random.normal(kpz, (pb, G.size, G.size, 3))
      penalty, pl_mean, _, img = path_length_penalty(
          lambda lat: gen(g_params, lat, kpn), latents, img_noise, mean_path_length, cfg.pl_decay,
          mean)
      return cfg.pl_weight * cfg.g_reg_every * penalty + 0 * img[0, 0, 0, 0], (penalty, pl_mean)

    (_, (penalty, pl_mean)), grads = jax.value_and_grad(pl_loss_fn, has_aux=True)(g_params)
    g_params, g_opt = apply_update(tx_g, g_params, grads, g_opt, mean)
    mean_path_length = jax.lax.stop_gradient(pl_mean)
    metrics["path_penalty"] = penalty

  # --- EMA generator over parameters.
  accum = 0.5 ** ((b * (1 if axis_name is None else jax.lax.psum(1, axis_name))) / (cfg.ema_kimg * 1000))
  g_ema = optax.incremental_update(g_params, state.g_ema, 1.0 - accum)
  state = state.replace(step=state.step + 1, g_params=g_params, g_ema=g_ema, d_params=d_params,
                        g_opt_state=g_opt, d_opt_state=d_opt, mean_path_length=mean_path_length)
  return state, mean(metrics)
