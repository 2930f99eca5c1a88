"""Edits that keep the background: SeFa directions and Labels4Free compositing (pure functions).

SeFa (Shen & Zhou, CVPR 2021; rosinality's `closed_form_factorization.py`): a style vector w
enters each layer through its modulation, an affine map s = A_l w + b_l. Stacking the layers'
weights, A = [A_conv1; A_convs_0; ...; A_to_rgb1] (rosinality's key filter: every `modulation`
weight except those of `to_rgbs`), the unit directions n that change the styles most maximise
||A n||^2, i.e. they are the eigenvectors of A^T A (the right singular vectors of A), sorted by
eigenvalue. An edit moves w, or every row of w+, by strength * n_k.

  eigenvalues, directions = sefa_directions(modulation_matrix(g_params))   # directions[:, k]
  w_edit = apply_direction(w, directions[:, k], strength)

Background-kept editing (Labels4Free paper section 3): segment the original with A (alpha), complete
its background where the object stood (B), segment the edit again (alpha') and composite

  preserved = alpha' * G(w') + (1 - alpha') * B,   B = where(fill, completion, original),
  fill      = dilate(alpha > fill_threshold, dilate pixels)

Two completions are provided by the programs: G_bg of the same latent (Labels4Free's own background
generator) and biharmonic inpainting of the original over the fill region (`inpaint`). Background
preservation is measured on the pixels that are background in both hard masks (alpha <= 0.9).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np
from l4f_jax.method import masks


def _is_sefa_layer(name: str) -> bool:
  """rosinality's filter: modulation weights whose key does not contain `to_rgbs`."""
  return "to_rgbs" not in name


def modulation_matrix(g_params, include: Callable[[str], bool] = _is_sefa_layer) -> np.ndarray:
  """A = the modulation (EqualLinear) weights of the included layers, concatenated along the
  output axis in rosinality's orientation: float64 [sum of output channels, style_dim].

  Weights are the stored (unscaled) ones, as rosinality's script reads them: every modulation
  layer has the same equalised-lr scale 1 / sqrt(style_dim), so scaling changes only the
  eigenvalues, not the directions.
  """
  blocks = []
  for name in sorted(g_params):
    sub = g_params[name]
    mod = sub.get("conv", {}).get("modulation") if isinstance(sub, dict) else None
    if mod is None or not include(name):
      continue
    blocks.append(np.asarray(mod["weight"], np.float64).T)  # Flax [style_dim, out] -> [out, D]
  if not blocks:
    raise ValueError("modulation_matrix: no modulation weights in the generator parameters")
  return np.concatenate(blocks, axis=0)


def sefa_directions(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(eigenvalues [D] descending, directions [D, D]) of A^T A for A = `weight` [M, D].

  Column k of `directions` is the unit eigenvector of the k-th largest eigenvalue; the columns
  are orthonormal. Signs are fixed so that each column's largest-magnitude entry is positive.
  """
  a = np.asarray(weight, np.float64)
  vals, vecs = np.linalg.eigh(a.T @ a)
  order = np.argsort(vals)[::-1]
  vals, vecs = vals[order], vecs[:, order]
  pivot = vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])]
  vecs = vecs * np.where(pivot < 0, -1.0, 1.0)[None, :]
  return vals, vecs


def apply_direction(latent, direction, strength):
  """latent w [B, D] or w+ [B, n_latent, D] moved by strength * direction [D] (every row of w+)."""
  return latent + jnp.asarray(strength, latent.dtype) * jnp.asarray(direction, latent.dtype)


def dilate(mask, pixels: int):
  """Binary dilation of [B, H, W] masks by a (2 pixels + 1)^2 square."""
  m = jnp.asarray(mask, bool)
  for _ in range(int(pixels)):
    p = jnp.pad(m, ((0, 0), (1, 1), (1, 1)))
    h, w = m.shape[1:]
    m = jnp.stack([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]).any(axis=0)
  return m


def fill_region(alpha, fill_threshold: float = 0.1, pixels: int = 1):
  """Where the original object stood: dilate(alpha > fill_threshold) as bool [B, H, W]."""
  a = jnp.asarray(alpha)
  a = a[..., 0] if a.ndim == 4 else a
  return dilate(a > fill_threshold, pixels)


def complete_background(original, completion, fill):
  """B = completion inside `fill` [B, H, W], the original elsewhere; images [B, H, W, 3]."""
  return jnp.where(jnp.asarray(fill)[..., None], completion, original)


def composite(alpha_edit, edited, background):
  """alpha' * edited + (1 - alpha') * background; alpha' [B, H, W, 1] or [B, H, W]."""
  a = jnp.asarray(alpha_edit)
  a = a[..., None] if a.ndim == 3 else a
  return a * edited + (1 - a) * background


def background_pixels(alpha, alpha_edit, threshold: float = masks.HARD_MASK_THRESHOLD):
  """Pixels that are background in both hard masks (alpha <= threshold in both): bool [B, H, W]."""
  a, e = jnp.asarray(alpha), jnp.asarray(alpha_edit)
  a = a[..., 0] if a.ndim == 4 else a
  e = e[..., 0] if e.ndim == 4 else e
  return (a <= threshold) & (e <= threshold)


def masked_sse(x, reference, mask):
  """(sum of squared errors, number of values) per image over the masked pixels; images in
  [-1, 1] (x clipped), measured on the [0, 1] scale, all 3 channels. Pooled PSNR of a set of
  images = psnr_from_sse(sum sse, sum count)."""
  d = (jnp.clip(x, -1, 1) - jnp.clip(reference, -1, 1)) * 0.5
  m = jnp.asarray(mask, d.dtype)[..., None]
  return jnp.sum(jnp.square(d) * m, axis=(1, 2, 3)), 3 * jnp.sum(m, axis=(1, 2, 3))


def psnr_from_sse(sse, count, peak: float = 1.0) -> float:
  """PSNR in dB of a pooled squared error (inf when it is 0, nan when nothing was measured)."""
  sse, count = float(np.sum(sse)), float(np.sum(count))
  if count == 0:
    return float("nan")
  mse = sse / count
  return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def inpaint(images, fill, inpaint_fn: Optional[Callable] = None) -> np.ndarray:
  """Fills `fill` [B, H, W] of images [B, H, W, 3] in [-1, 1] by biharmonic inpainting
  (scikit-image `inpaint_biharmonic`, or `inpaint_fn(image01 [H, W, 3], mask [H, W]) -> image01`).
  Host-side NumPy; an image with nothing to fill is returned unchanged."""
  if inpaint_fn is None:
    from skimage.restoration import inpaint_biharmonic  # pylint: disable=import-outside-toplevel
    inpaint_fn = lambda img, m: inpaint_biharmonic(img, m, channel_axis=-1)
  x = np.clip(np.asarray(images, np.float64), -1, 1) * 0.5 + 0.5
  fill = np.array(fill, bool)  # a writable copy (scikit-image needs one)
  out = x.copy()
  for b in range(len(x)):
    if fill[b].any() and not fill[b].all():
      out[b] = inpaint_fn(x[b], fill[b])
  return (out * 2 - 1).astype(np.float32)
