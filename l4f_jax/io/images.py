"""Picture helpers: conversion to uint8, atomic PNG writes, labelled grids.

Conventions: RGB images are float in [-1, 1] (or uint8); masks / alpha are float in [0, 1], bool
or uint8, shaped [..., H, W] or [..., H, W, 1]. Float -> uint8 is floor(v * 255 + 0.5) after
clipping, as torchvision's `save_image(normalize=True, range=(-1, 1))` does.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from l4f_jax.io import files

# Row order used by `save_grid` when the dict holds these keys; other keys follow in dict order.
GRID_ORDER = ("image", "alpha", "mask", "composite", "foreground", "background")


def to_uint8(x, mask: bool | None = None) -> np.ndarray:
  """Image in [-1, 1] or mask in [0, 1] (bool, float) -> uint8; uint8 passes through.

  `mask=None` guesses: bool, or a last axis that is not 3, means mask.
  """
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  if x.dtype == np.bool_:
    return x.astype(np.uint8) * np.uint8(255)
  if mask is None:
    mask = x.ndim < 3 or x.shape[-1] != 3
  x = x.astype(np.float32)
  v = np.clip(x, 0.0, 1.0) if mask else (np.clip(x, -1.0, 1.0) + 1.0) * 0.5
  return np.floor(v * 255.0 + 0.5).astype(np.uint8)


def _to_rgb(x) -> np.ndarray:
  """[N, H, W], [N, H, W, 1] or [N, H, W, 3] (any convention above) -> uint8 [N, H, W, 3]."""
  x = np.asarray(x)
  is_mask = x.dtype == np.bool_ or x.ndim == 3 or x.shape[-1] == 1
  u = to_uint8(x, mask=is_mask if x.dtype != np.uint8 else None)
  if u.ndim == 3:
    u = u[..., None]
  if u.shape[-1] == 1:
    u = np.repeat(u, 3, axis=-1)
  if u.ndim != 4 or u.shape[-1] != 3:
    raise ValueError(f"make_grid: expected [N, H, W(, 1 or 3)] arrays, got shape {np.shape(x)}")
  return u


def make_grid(rows, pad: int = 2, pad_value: int = 255, ncols: int | None = None) -> np.ndarray:
  """Rows of pictures -> one uint8 [H', W', 3] image.

  Args:
    rows: list of [N, H, W(, C)] arrays (images [-1, 1] with C = 3, masks [0, 1] otherwise; see
      the module docstring). All share H, W; shorter rows are padded with blank cells.
    pad: pixels between cells and around the border.
    pad_value: grey level of the padding.
    ncols: cells per row (default: the longest row); extra entries are dropped.
  """
  cells = [_to_rgb(r) for r in rows]
  if not cells:
    raise ValueError("make_grid: no rows")
  h, w = cells[0].shape[1:3]
  for c in cells:
    if c.shape[1:3] != (h, w):
      raise ValueError(f"make_grid: all rows need the same H, W; got {c.shape[1:3]} and {(h, w)}")
  n = ncols or max(len(c) for c in cells)
  out = np.full((pad + len(cells) * (h + pad), pad + n * (w + pad), 3), pad_value, np.uint8)
  for i, c in enumerate(cells):
    for j in range(min(n, len(c))):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y:y + h, x:x + w] = c[j]
  return out


def save_png(path, array) -> None:
  """Writes one picture ([H, W], [H, W, 1] or [H, W, 3], any convention above) atomically."""
  a = np.asarray(array)
  is_mask = a.dtype == np.bool_ or a.ndim == 2 or a.shape[-1] == 1
  u = to_uint8(a, mask=is_mask if a.dtype != np.uint8 else None)
  if u.ndim == 3 and u.shape[-1] == 1:
    u = u[..., 0]
  files.atomic_write(path, lambda tmp: Image.fromarray(u).save(tmp, format="PNG"))


def grid_rows(columns: dict) -> list[tuple[str, np.ndarray]]:
  """(label, array) pairs of `columns` in GRID_ORDER, then any other keys in dict order."""
  keys = [k for k in GRID_ORDER if k in columns] + [k for k in columns if k not in GRID_ORDER]
  return [(k, columns[k]) for k in keys]


def save_grid(path, columns: dict, pad: int = 2, labels: bool = True,
              ncols: int | None = None) -> np.ndarray:
  """Saves {'image': ..., 'alpha': ..., 'composite': ..., 'background': ...} as labelled rows.

  One row per key, ordered by GRID_ORDER (image, alpha, mask, composite, foreground, background)
  and then other keys in dict order; with `labels`, the key is written in a left margin.
  Returns the uint8 picture that was written.
  """
  rows = grid_rows(columns)
  grid = make_grid([a for _, a in rows], pad=pad, ncols=ncols)
  if labels:
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [draw.textbbox((0, 0), k, font=font) for k, _ in rows]
    width = 8 + max(b[2] for b in boxes)
    canvas = Image.new("RGB", (grid.shape[1] + width, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (width, 0))
    draw = ImageDraw.Draw(canvas)
    h = _to_rgb(rows[0][1]).shape[1]
    for i, ((k, _), b) in enumerate(zip(rows, boxes)):
      y = pad + i * (h + pad) + (h - (b[3] + b[1])) // 2
      draw.text((4, y), k, fill=(0, 0, 0), font=font)
    grid = np.asarray(canvas)
  files.atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
  return grid
