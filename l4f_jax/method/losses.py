"""Labels4Free losses (official `train.py:56-93`), as pure functions on NHWC arrays.

Every batch mean is over the array it is given (the local batch); under `jax.shard_map` the caller
`pmean`s the result to get the global (DDP) value.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from l4f_jax.method import masks


def d_logistic_loss(real_pred, fake_pred):
  """Non-saturating D loss: E[softplus(-D(real))] + E[softplus(D(fake))]."""
  return jnp.mean(jax.nn.softplus(-real_pred)) + jnp.mean(jax.nn.softplus(fake_pred))


def r1_penalty(d_fn: Callable, real, *, with_pred: bool = False):
  """R1 penalty E_b[sum_{h,w,c} (d sum_b D(real) / d real)^2].

  `d_fn` maps images to logits (D's parameters closed over, so `jax.grad` of the caller reaches them
  through this inner gradient). The gradient is taken w.r.t. the images only. With `with_pred`,
  returns (penalty, D(real)) from the same forward pass.
  """
  pred, vjp = jax.vjp(d_fn, real)
  (grad,) = vjp(jnp.ones_like(pred))
  penalty = jnp.mean(jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1))
  return (penalty, pred) if with_pred else penalty


def alpha_loss(fake_pred, alpha, *, sat_weight: float = 1.0, loss_multiplier: float = 1.2,
               fg_coverage_value: float = 0.25, bg_coverage_wt: float = 0.0,
               bg_coverage_value: float = 0.75):
  """Loss of the alpha network A (RameenAbdal/Labels4Free, train.py: the A loss of the training loop).

  L_A = w_sat * E[softplus(-D(x_c))]
        + lambda * (E_{b,h,w}[min(a, 1-a)] + E_b[relu(phi_fg - mean_hw a_b)])
        + w_bg * E_b[relu(phi_bg - (1 - mean_hw a_b))]
  alpha: [B, H, W, 1]. Returns (total, {'sat', 'binarization', 'fg_coverage', 'bg_coverage'}) with
  the unweighted terms.
  """
  sat = jnp.mean(jax.nn.softplus(-fake_pred))
  binarization = jnp.mean(jnp.minimum(alpha, 1 - alpha))
  area = jnp.mean(alpha, axis=tuple(range(1, alpha.ndim)))  # mean_hw alpha_b
  fg_coverage = jnp.mean(jax.nn.relu(fg_coverage_value - area))
  bg_coverage = jnp.mean(jax.nn.relu(bg_coverage_value - (1 - area)))
  total = (sat_weight * sat + loss_multiplier * (binarization + fg_coverage)
           + bg_coverage_wt * bg_coverage)
  terms = {"sat": sat, "binarization": binarization, "fg_coverage": fg_coverage,
           "bg_coverage": bg_coverage}
  return total, terms


def alpha_stats(alpha, *, hard_threshold: float = masks.HARD_MASK_THRESHOLD, low: float = 0.1,
                high: float = 0.9):
  """Collapse/binarization monitors: mean alpha, fraction > hard_threshold (the inference mask rule,
  strict), fraction undecided in (low, high)."""
  a = alpha.astype(jnp.promote_types(alpha.dtype, jnp.float32))
  return {"alpha_mean": jnp.mean(a),
          "alpha_frac_fg": jnp.mean(masks.hard_mask(a, hard_threshold).astype(a.dtype)),
          "alpha_frac_mid": jnp.mean(((a > low) & (a < high)).astype(a.dtype))}
