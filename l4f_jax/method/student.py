"""The student segmenter's math: loss, one data-parallel Adam step, prediction (pure functions).

Labels4Free's alpha network labels generated images; a U-Net student (`l4f_jax.models.unet.UNet`)
learns the same labels from the pixels alone, so that it runs on real photos:

  state = init_student_state(hp, params)
  state, metrics = student_step(state, images, soft_alpha, model=unet, hp=hp)  # one Adam step
  alpha = predict_alpha(state.params, real_images, model=unet)                # [B, H, W, 1]

The loss (`student_loss`) is the per-pixel binary cross-entropy against the SOFT alpha of A,
optionally plus a soft Dice term. Soft-target BCE is a proper scoring rule: its minimiser is
p = alpha, so the student estimates A's alpha (calibrated, keeping A's uncertainty at boundaries)
rather than a thresholded copy, and its mask p > 0.5 targets the teacher's alpha > 0.5. Per-pixel
cross-entropy is also the usual loss of the U-Net students trained on generated masks (Voynov et
al., Melas-Kyriazi et al.). Dice is therefore off by default (dice_weight = 0): it is not proper (it
rewards saturated outputs), it is unstable on images whose foreground is (nearly) empty, and the
Labels4Free alphas are already near-binary with a sizeable foreground (at least phi_fg: 0.25 in
the official settings), so there is no severe class imbalance to fix. Set it (e.g. 0.5) for datasets with small objects. Undecided
pixels (lo < alpha < hi, default 0.1 / 0.9) can be ignored (`ignore_undecided`): A is least
trustworthy exactly there.

Every loss term and metric is a mean over images of a per-image quantity (pixel sums are normalised
per image), so under `jax.shard_map` with equal per-device batches the `pmean` over `axis_name`
of the per-device values equals the value on the concatenated global batch; with the per-sample
GroupNorm of the U-Net, the sharded step equals the single-device step on the global batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from l4f_jax.config import option
from l4f_jax.method.optim import apply_update, device_mean, lazy_adam, varying

_SUM_AXES = (1, 2, 3)  # pixel axes of [B, H, W, 1]


@dataclasses.dataclass(frozen=True)
class StudentHParams:
  """Hyper-parameters of one student step.

  lr: Adam learning rate (b1 = 0.9, b2 = 0.999, eps = 1e-8: plain Adam).
  dice_weight: weight of the soft Dice term added to the BCE (0 = BCE only, see module docstring).
  hard_weight: target = (1 - hard_weight) alpha + hard_weight [alpha > 0.5]; 0 = soft alpha of A,
    1 = its hard mask.
  ignore_undecided: zero the loss weight of pixels with undecided_lo < alpha < undecided_hi.
  undecided_lo, undecided_hi: the alpha band counted as undecided.
  (Scalar fields only: `l4f_jax.config` derives command-line flags from them.)
  """
  lr: float = option(1e-3, "Student Adam learning rate.", gt=0)
  dice_weight: float = option(0.0, "Weight of the soft Dice term (0 = BCE only).", ge=0)
  hard_weight: float = option(0.0, "Target = (1 - w) alpha + w [alpha > 0.5] (0 = soft alpha).",
                              ge=0, le=1)
  ignore_undecided: bool = option(False, "Zero the loss of pixels with undecided_lo < alpha < "
                                  "undecided_hi.")
  undecided_lo: float = option(0.1, "Lower end of the undecided alpha band.", ge=0, le=1)
  undecided_hi: float = option(0.9, "Upper end of the undecided alpha band.", ge=0, le=1)


@flax.struct.dataclass
class StudentState:
  step: jnp.ndarray  # int32 scalar: updates done
  params: Any
  opt_state: Any


def make_optimizer(hp: StudentHParams) -> optax.GradientTransformation:
  """Plain Adam(hp.lr, b1 = 0.9, b2 = 0.999) through the shared `lazy_adam`."""
  return lazy_adam(hp.lr, None, b1=0.9, b2=0.999)


def init_student_state(hp: StudentHParams, params) -> StudentState:
  """Step 0 and a fresh Adam state for `params` (e.g. `UNet().init(key, images)['params']`)."""
  return StudentState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=make_optimizer(hp).init(params))


def undecided_mask(soft_target, lo: float = 0.1, hi: float = 0.9):
  """1.0 where lo < alpha < hi (A has not decided), else 0.0; same shape as soft_target."""
  return ((soft_target > lo) & (soft_target < hi)).astype(soft_target.dtype)


def student_loss(logits, soft_target, *, dice_weight: float = 0.0, hard_weight: float = 0.0,
                 ignore_undecided: bool = False, undecided: tuple[float, float] = (0.1, 0.9),
                 weights: Optional[jnp.ndarray] = None, dice_eps: float = 1.0):
  """(loss, terms) of the student's logits [B, H, W, 1] against A's alpha [B, H, W, 1] in [0, 1].

  t = (1 - hard_weight) alpha + hard_weight [alpha > 0.5], p = sigmoid(logits), per-pixel weights
  w = `weights` (default 1) times, if `ignore_undecided`, [not lo < alpha < hi]. Per image b:
    bce_b  = sum_px w BCE(logits, t) / max(sum_px w, 1)       BCE(z, t) = softplus(z) - t z
    dice_b = 1 - (2 sum_px w p t + dice_eps) / (sum_px w (p + t) + dice_eps)
  loss = mean_b bce_b + dice_weight * mean_b dice_b. terms: bce, dice (computed even when its weight
  is 0), loss_weight (mean pixel weight: 1 - fraction ignored).
  """
  dtype = jnp.promote_types(logits.dtype, jnp.float32)  # float32, or float64 in x64 tests
  logits, alpha = logits.astype(dtype), soft_target.astype(dtype)
  t = alpha if hard_weight == 0 else (1 - hard_weight) * alpha + hard_weight * (alpha > 0.5)
  w = jnp.ones_like(alpha) if weights is None else jnp.broadcast_to(weights, alpha.shape)
  if ignore_undecided:
    w = w * (1 - undecided_mask(alpha, *undecided))
  w_sum = jnp.sum(w, _SUM_AXES)
  bce_px = optax.sigmoid_binary_cross_entropy(logits, t)
  bce = jnp.sum(w * bce_px, _SUM_AXES) / jnp.maximum(w_sum, 1)
  p = jax.nn.sigmoid(logits)
  dice = 1 - ((2 * jnp.sum(w * p * t, _SUM_AXES) + dice_eps)
              / (jnp.sum(w * (p + t), _SUM_AXES) + dice_eps))
  terms = dict(bce=jnp.mean(bce), dice=jnp.mean(dice), loss_weight=jnp.mean(w))
  loss = terms["bce"] + dice_weight * terms["dice"] if dice_weight else terms["bce"]
  return loss, terms


def mask_stats(logits, soft_target):
  """Per-batch means of the hard-mask agreement of p = sigmoid(logits) > 0.5 with alpha > 0.5.

  Returns pixel_acc, pred_fg, target_fg, and the pooled fractions inter / union (intersection and
  union of the foregrounds, as fractions of all pixels). Being plain means, they average exactly
  over devices; the pooled IoU is inter / union of the averaged fractions (`pooled_iou`).
  """
  pred = logits > 0  # sigmoid(z) > 0.5
  tgt = soft_target > 0.5
  f = lambda m: jnp.mean(m.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  return dict(pixel_acc=f(pred == tgt), pred_fg=f(pred), target_fg=f(tgt), inter=f(pred & tgt),
              union=f(pred | tgt))


def pooled_iou(inter, union):
  """Foreground IoU pooled over all pixels of the batch (1 when both masks are empty)."""
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 1.0)


def student_step(state: StudentState, images, soft_targets, *, model: nn.Module,
                 hp: StudentHParams, axis_name=None):
  """One Adam step of the student on the local batch. Returns (new state, metrics of scalars).

  images: [B, H, W, 3] in [-1, 1]; soft_targets: alpha of A, [B, H, W, 1] in [0, 1]. Under
  `jax.shard_map` pass `axis_name`: gradients and metrics are averaged over it (DDP semantics).
  Metrics: loss, bce, dice, loss_weight, pixel_acc, pred_fg, target_fg, iou (pooled foreground IoU
  of sigmoid(logits) > 0.5 vs alpha > 0.5), all of the forward pass before the update.
  """
  tx = make_optimizer(hp)
  mean = device_mean(axis_name)

  def loss_fn(params):
    logits = model.apply({"params": params}, images)
    loss, terms = student_loss(logits, soft_targets, dice_weight=hp.dice_weight,
                               hard_weight=hp.hard_weight, ignore_undecided=hp.ignore_undecided,
                               undecided=(hp.undecided_lo, hp.undecided_hi))
    return loss, (terms, logits)

  (loss, (terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      varying(state.params, axis_name))
  params, opt_state = apply_update(tx, state.params, grads, state.opt_state, mean)
  stats = mask_stats(jax.lax.stop_gradient(logits), soft_targets)
  metrics = mean(dict(loss=loss, **terms, **stats))
  metrics["iou"] = pooled_iou(metrics.pop("inter"), metrics.pop("union"))
  return StudentState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def predict_alpha(params, images, *, model: nn.Module):
  """The student's alpha: sigmoid(model(images)), [B, H, W, 1] float32 in (0, 1)."""
  return jax.nn.sigmoid(model.apply({"params": params}, images))


def alpha_from_uint8(params, images_uint8, *, model: nn.Module):
  """The student on raw pixels: uint8 RGB [B, S, S, 3] -> float32 alpha [B, S, S] in [0, 1].

  Pixels map to [-1, 1] as x / 127.5 - 1 (the convention of the pairs the student trained on).
  This is the function `experiments.export_segmenter` serializes and every in-process caller runs,
  so that the exported artifact and the in-process student compute the same thing.
  """
  x = images_uint8.astype(jnp.float32) / jnp.float32(127.5) - jnp.float32(1.0)
  return predict_alpha(params, x, model=model)[..., 0]
