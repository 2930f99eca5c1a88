"""One Labels4Free training iteration (official `train.py:122-245`) as pure functions.

    state, metrics = train_step(state, g_params, w_avg, real, inputs, models=models, cfg=cfg,
                                do_r1=(i % cfg.d_reg_every == 0))

runs, on the local batch:
  1. D step: fg = G(z_d; psi, w_avg) with its features, bg = G_bg(z_d) (no truncation), alpha = A(feats)
     with the current A, x_c = alpha fg + (1 - alpha) bg; L_D on D(real) and D(x_c) (separate calls);
     one Adam update of D.
  2. If `do_r1`: lazy R1 on the same real batch plus the official `q * D(real)[0]` term; a second Adam
     update of D with the same optimizer state.
  3. A step with a fresh z_a through the updated, frozen D: L_A; one Adam update of A.
  4. EMA of A (official: computed, never saved or used).
G is frozen (its outputs are constants; the four G passes of one iteration run as one batched fg and
one batched bg call, the same per-sample math). Every random draw is explicit in `Inputs`, so one iteration
equals the official one given the same latents, noise maps and real images.

Under `jax.shard_map` pass `axis_name`: gradients and metrics are averaged over it, which is DDP's
semantics (batch means become global means; minibatch stddev stays per device; the R1 quirk term
becomes the mean over devices of each device's first real sample). `cfg.stddev_chunks` emulates n
devices on one: D runs separately on each of n contiguous chunks of the local batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from l4f_jax.config import option
from l4f_jax.method.optim import apply_update, device_mean, lazy_adam, varying
from l4f_jax.method.losses import alpha_loss, alpha_stats, d_logistic_loss, r1_penalty
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import (Discriminator, Generator, discriminate_in_chunks,
                                      make_noise)


@dataclasses.dataclass(frozen=True)
class L4FConfig:
  """Hyper-parameters of one iteration; defaults are the official `train.py` defaults.

  r1_quirk_weight: q of the official R1 step, loss = (r1/2) d_reg_every R1 + q D(real)[0]
    (`train.py:208`); 1.0 = official, 0.0 = rosinality.
  stddev_chunks: number of emulated devices the local batch is split into for D (contiguous chunks,
    each its own minibatch-stddev group(s) and its own first sample for the R1 quirk).
  compute_dtype: None = compute in the inputs' dtype (float32; float64 for parity tests); "bfloat16"
    runs the G and D convolutions in bfloat16 (A, losses and optimizer stay in the inputs' dtype).
  alpha_ema_decay: decay of the (unused) official EMA of A, 0.5 ** (32 / 10000).
  """
  lr: float = option(2e-4, "Base learning rate (A: lr*4/5, D: lr*16/17).", gt=0)
  r1: float = option(10.0, "R1 weight gamma.", ge=0)
  d_reg_every: int = option(16, "Lazy R1 interval (R1 at i % d_reg_every == 0).", ge=1)
  g_reg_every: int = option(4, "Only scales A's Adam (lr, beta2), as the official code.", ge=1)
  r1_quirk_weight: float = option(1.0, "q in the official R1 step's + q*D(real)[0] (1.0 official, "
                                  "0.0 rosinality).")
  sat_weight: float = option(1.0, "Weight of A's GAN loss.", ge=0)
  loss_multiplier: float = option(1.2, "lambda: weight of binarization + fg coverage.", ge=0)
  fg_coverage_value: float = option(0.25, "phi_fg of the foreground-coverage term.", ge=0, le=1)
  bg_coverage_wt: float = option(0.0, "w_bg: weight of the background-coverage term.", ge=0)
  bg_coverage_value: float = option(0.75, "phi_bg of the background-coverage term.", ge=0, le=1)
  truncation: float = option(1.0, "Truncation psi of the foreground pass during training.",
                             flag="trunc", gt=0)
  background_mode: str = option("auto", "G_bg: auto = official (zero the constant input at 512 px, "
                                "else conv1's output).", choices=("auto", "conv1", "input"))
  alpha_ema_decay: float = option(0.5 ** (32 / 10000), "Decay of the unused EMA of A.", flag=None)
  stddev_chunks: int = option(1, "Emulated devices per device (derived).", flag=None, ge=1)
  compute_dtype: Optional[str] = option(None, "None or 'bfloat16' (derived from --dtype).",
                                        flag=None)


@dataclasses.dataclass(frozen=True)
class Models:
  """The three (weightless, hashable) modules: G (frozen), A and D (trained)."""
  generator: Generator
  alpha: AlphaNetwork
  discriminator: Discriminator


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 scalar: iterations done
  alpha_params: Any
  alpha_ema: Any  # EMA of A (official `ema_bg`): kept and updated, never used by the method
  d_params: Any
  alpha_opt_state: Any
  d_opt_state: Any


@flax.struct.dataclass
class Inputs:
  """Every random draw of one iteration. Noise maps: lists in rosinality order, [B, r, r, 1]."""
  z_d: jnp.ndarray
  noise_fg_d: list
  noise_bg_d: list
  z_a: jnp.ndarray
  noise_fg_a: list
  noise_bg_a: list


def make_optimizers(cfg: L4FConfig):
  """(tx_alpha, tx_d): Adam(b1=0) with rosinality's lazy-regularisation scaling c = k/(k+1).

  A: k = g_reg_every (4; A has no regulariser but the official code scales it anyway); D:
  k = d_reg_every. lr * c, b2 = 0.99 ** c, eps = 1e-8.
  """
  return lazy_adam(cfg.lr, cfg.g_reg_every), lazy_adam(cfg.lr, cfg.d_reg_every)


def init_state(cfg: L4FConfig, models: Models, alpha_params, d_params) -> TrainState:
  """Fresh optimizer states; the EMA starts as a copy of A."""
  del models  # the parameter trees carry everything; kept for a uniform signature
  tx_a, tx_d = make_optimizers(cfg)
  return TrainState(step=jnp.zeros((), jnp.int32), alpha_params=alpha_params,
                    alpha_ema=jax.tree.map(jnp.array, alpha_params), d_params=d_params,
                    alpha_opt_state=tx_a.init(alpha_params), d_opt_state=tx_d.init(d_params))


def sample_inputs(key, batch: int, generator: Generator, dtype=jnp.float32) -> Inputs:
  """Draws the GLOBAL batch's latents and noise (independent keys for every z and noise layer)."""
  k = jax.random.split(key, 6)
  z = lambda kk: jax.random.normal(kk, (batch, generator.style_dim), dtype)
  noise = lambda kk: make_noise(kk, generator.size, batch, dtype)
  return Inputs(z_d=z(k[0]), noise_fg_d=noise(k[1]), noise_bg_d=noise(k[2]),
                z_a=z(k[3]), noise_fg_a=noise(k[4]), noise_bg_a=noise(k[5]))


def _with_dtype(module, cfg: L4FConfig):
  return module if cfg.compute_dtype is None else module.clone(dtype=jnp.dtype(cfg.compute_dtype))


def generate(g_params, w_avg, z, noise_fg, noise_bg, *, models: Models, cfg: L4FConfig):
  """fg = G(z; psi, w_avg) and its A features, bg = G_bg(z) (no truncation), as constants.

  Returns (fg, bg, features) in z's dtype; `features` are the 2n maps A reads.
  """
  g = _with_dtype(models.generator, cfg)
  fg, feats = g.apply({"params": g_params}, z, truncation=cfg.truncation, truncation_latent=w_avg,
                      noise=noise_fg)
  bg, _ = g.apply({"params": g_params}, z, noise=noise_bg, background=True,
                  background_mode=cfg.background_mode)
  out = (fg, bg, select_features(feats, g.size))
  return jax.tree.map(lambda x: jax.lax.stop_gradient(x).astype(z.dtype), out)


def blend(alpha_params, fg, bg, features, *, models: Models):
  """(x_c, alpha): alpha = A(features), x_c = alpha fg + (1 - alpha) bg (unclamped)."""
  alpha = models.alpha.apply({"params": alpha_params}, features)
  return alpha * fg + (1 - alpha) * bg, alpha


def composite(g_params, alpha_params, w_avg, z, noise_fg, noise_bg, *, models: Models,
              cfg: L4FConfig):
  """(x_c, alpha, fg, bg) of the training loop for latents z (generate + blend)."""
  fg, bg, feats = generate(g_params, w_avg, z, noise_fg, noise_bg, models=models, cfg=cfg)
  x_c, alpha = blend(alpha_params, fg, bg, feats, models=models)
  return x_c, alpha, fg, bg


def discriminate(d_params, *xs, models: Models, cfg: L4FConfig):
  """D logits [B, 1] for each image batch in `xs` (one result per argument, a single array for one).

  D runs as separate calls: per argument and, within it, per each of `cfg.stddev_chunks` contiguous
  chunks (each call forms its own minibatch-stddev groups). The calls run as one batched D whose
  minibatch stddev is chunked, which computes exactly the separate calls (real and fake batches
  never share a group).
  """
  return discriminate_in_chunks(_with_dtype(models.discriminator, cfg), d_params, *xs,
                                chunks=cfg.stddev_chunks)


def train_step(state: TrainState, g_params, w_avg, real, inputs: Inputs, *, models: Models,
               cfg: L4FConfig, do_r1: bool, axis_name=None):
  """One official iteration on the local batch. Returns (new state, metrics of scalars).

  real: [B, S, S, 3] in [-1, 1]; w_avg: [1, style_dim] (used when cfg.truncation < 1); do_r1: static
  (host-side `step % d_reg_every == 0`). Metrics: d_loss, real_score, fake_score, (r1, r1_quirk,
  r1_loss when do_r1), a_loss, a_sat, a_binarization, a_fg_coverage, a_bg_coverage, a_fake_score,
  alpha_mean, alpha_frac_fg, alpha_frac_mid (A-step alpha).
  """
  tx_a, tx_d = make_optimizers(cfg)
  mean = device_mean(axis_name)
  disc = lambda p, *x: discriminate(p, *x, models=models, cfg=cfg)
  metrics = {}

  # G is frozen, so the G passes of both steps run up front, as one batch (the same per-sample math).
  cat = lambda a, b: jnp.concatenate([a, b])
  both = generate(g_params, w_avg, cat(inputs.z_d, inputs.z_a),
                  jax.tree.map(cat, inputs.noise_fg_d, inputs.noise_fg_a),
                  jax.tree.map(cat, inputs.noise_bg_d, inputs.noise_bg_a), models=models, cfg=cfg)
  b = inputs.z_d.shape[0]
  (fg, bg, feats), g_a = jax.tree.map(lambda x: x[:b], both), jax.tree.map(lambda x: x[b:], both)

  # 1. D step (A frozen: its alpha is a constant here).
  x_c, _ = blend(state.alpha_params, fg, bg, feats, models=models)
  x_c = jax.lax.stop_gradient(x_c)

  def d_loss_fn(p):
    fake_pred, real_pred = disc(p, x_c, real)  # two D calls (one batched D, never mixed)
    return d_logistic_loss(real_pred, fake_pred), (real_pred, fake_pred)

  (d_loss, (real_pred, fake_pred)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
      varying(state.d_params, axis_name))
  d_params, d_opt_state = apply_update(tx_d, state.d_params, grads, state.d_opt_state, mean)
  metrics.update(d_loss=d_loss, real_score=jnp.mean(real_pred), fake_score=jnp.mean(fake_pred))

  # 2. Lazy R1 (+ the official quirk term), a second D update with the same Adam state.
  if do_r1:
    def r1_loss_fn(p):
      penalty, pred = r1_penalty(lambda x: disc(p, x), real, with_pred=True)
      quirk = jnp.mean(pred.reshape(cfg.stddev_chunks, -1)[:, 0])  # first row of each chunk
      loss = cfg.r1 / 2 * penalty * cfg.d_reg_every + cfg.r1_quirk_weight * quirk
      return loss, (penalty, quirk)

    (r1_loss, (penalty, quirk)), grads = jax.value_and_grad(r1_loss_fn, has_aux=True)(
        varying(d_params, axis_name))
    d_params, d_opt_state = apply_update(tx_d, d_params, grads, d_opt_state, mean)
    metrics.update(r1=penalty, r1_quirk=quirk, r1_loss=r1_loss)

  # 3. A step through the updated, frozen D.
  fg, bg, feats = g_a

  def a_loss_fn(ap):
    x, alpha = blend(ap, fg, bg, feats, models=models)
    pred = disc(d_params, x)
    total, terms = alpha_loss(pred, alpha, sat_weight=cfg.sat_weight,
                              loss_multiplier=cfg.loss_multiplier,
                              fg_coverage_value=cfg.fg_coverage_value,
                              bg_coverage_wt=cfg.bg_coverage_wt,
                              bg_coverage_value=cfg.bg_coverage_value)
    return total, (terms, alpha, pred)

  (a_loss, (terms, alpha, a_pred)), grads = jax.value_and_grad(a_loss_fn, has_aux=True)(
      varying(state.alpha_params, axis_name))
  alpha_params, alpha_opt_state = apply_update(tx_a, state.alpha_params, grads,
                                               state.alpha_opt_state, mean)
  metrics.update(a_loss=a_loss, a_fake_score=jnp.mean(a_pred),
                 **{f"a_{k}": v for k, v in terms.items()}, **alpha_stats(alpha))

  # 4. EMA of A (official `accumulate(ema_bg, bg_extractor, 0.5 ** (32 / 10000))`; never used).
  alpha_ema = optax.incremental_update(alpha_params, state.alpha_ema, 1.0 - cfg.alpha_ema_decay)

  new_state = TrainState(step=state.step + 1, alpha_params=alpha_params, alpha_ema=alpha_ema,
                         d_params=d_params, alpha_opt_state=alpha_opt_state,
                         d_opt_state=d_opt_state)
  return new_state, mean(metrics)
