"""Foreground/background mask metrics with the official `test_customdata.py` conventions.

Official conventions (RameenAbdal/Labels4Free, test_customdata.py):
- GT and prediction PNGs (`*.png`, not recursive) are paired by natural sort order per folder.
- Each file is read as grey (`PIL convert('LA')`, channel 0) and integer-divided by 255: only
  pixels of exactly 255 are foreground (1); anything else, anti-aliased edges included, is 0.
- One 2x2 confusion matrix is pooled over all pixels of all images: rows = GT, cols = prediction,
  class 0 = background (black), class 1 = foreground (white).
- Per class, with eps = 1e-4: IoU = TP/(eps+TP+FP+FN), Precision = TP/(eps+TP+FP),
  Recall = TP/(eps+TP+FN), F1 = 2PR/(eps+P+R), Acc = (N-FP-FN)/N; each rounded to 4 decimals,
  and the 'mean' (official 'total') is the mean of the rounded per-class values (not re-rounded).
- Row-label quirk: the official table names its rows ['fg', 'bg'] in class order, so its row
  'fg' holds the BACKGROUND metrics, 'bg' the FOREGROUND metrics, and 'total(-bg)' (rows from 1 on)
  is the foreground-only result. This module names the classes correctly: 'foreground' is white.

Beyond the official script: 'miou' = mean of the UNROUNDED class IoUs, then rounded (the official
'total' IoU, kept in metrics['mean']['iou'], averages rounded values and can differ by 1e-4);
'per_image_fg_iou' (mean over images of each image's foreground IoU, same eps, 0 for an image
with no foreground in GT and prediction); the GT / predicted foreground fractions (unrounded).

Note on the official custom_dataset table: 'miou' reproduces its mIoU column (e.g. Horse 0.9673, where the
official total is (0.9614 + 0.9733) / 2 = 0.96735). One cell differs from the official formula:
Cats fg F1 is 0.980249936 -> 0.9802 with eps in F1; the table's 0.9803 is 2PR/(P+R) without eps.
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np
from PIL import Image

from l4f_jax.errors import UserError, one_line

EPS = 1e-4
CLASSES = ("background", "foreground")  # class index 0, 1
_FIELDS = ("iou", "f1", "precision", "recall", "accuracy")


def natural_key(text: str):
  """natsort-like key: digit runs compare as integers ('2.png' < '10.png')."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def read_mask(path) -> np.ndarray:
  """Official reading: grey (LA channel 0) // 255 -> int64 [H, W] in {0, 1} (1 only at 255)."""
  with Image.open(path) as img:
    grey = np.asarray(img.convert("LA"))[..., 0]
  return (grey // 255).astype(np.int64)


def _as_binary(mask) -> np.ndarray:
  """bool as is; uint8 -> (== 255); other numbers -> (>= 0.5)."""
  m = np.asarray(mask)
  if m.dtype == np.bool_:
    return m
  if m.dtype == np.uint8:
    return m == 255
  return m >= 0.5


def confusion_matrix(gt, pred) -> np.ndarray:
  """2x2 int64 counts, rows = GT, cols = prediction, class 1 = foreground (binary inputs)."""
  g, p = _as_binary(gt), _as_binary(pred)
  if g.shape != p.shape:
    raise ValueError(f"confusion_matrix: GT shape {g.shape} != prediction shape {p.shape}")
  idx = 2 * g.reshape(-1).astype(np.int64) + p.reshape(-1).astype(np.int64)
  return np.bincount(idx, minlength=4).reshape(2, 2).astype(np.int64)


def class_metrics(cm) -> dict:
  """Official per-class metrics (4-decimal rounded) from a 2x2 confusion matrix."""
  cm = np.asarray(cm, np.float64)
  n = cm.sum()
  tp = np.diag(cm)
  tp_fp = cm.sum(axis=0)
  tp_fn = cm.sum(axis=1)
  acc = (n - (tp_fp + tp_fn - 2 * tp)) / n if n else np.zeros(2)
  rec = tp / (EPS + tp_fn)
  prec = tp / (EPS + tp_fp)
  f1 = 2 * prec * rec / (EPS + prec + rec)
  iou = tp / (EPS + tp_fp + tp_fn - tp)
  out = {}
  for k, name in enumerate(CLASSES):
    vals = dict(iou=iou[k], f1=f1[k], precision=prec[k], recall=rec[k], accuracy=acc[k])
    out[name] = {f: round(float(vals[f]), 4) for f in _FIELDS}
  out["mean"] = {f: (out["background"][f] + out["foreground"][f]) / 2 for f in _FIELDS}
  return out


def _ious(cm) -> np.ndarray:
  """Unrounded (background, foreground) IoU."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  return tp / (EPS + cm.sum(axis=0) + cm.sum(axis=1) - tp)


def metrics_from_confusions(confusions) -> dict:
  """Metrics dict (JSON-able) from per-image 2x2 confusion matrices."""
  confusions = [np.asarray(c, np.int64) for c in confusions]
  if not confusions:
    raise ValueError("no masks to evaluate")
  cm = np.sum(confusions, axis=0)
  n = int(cm.sum())
  out = dict(num_images=len(confusions), num_pixels=n, confusion=cm.tolist())
  out.update(class_metrics(cm))
  out["miou"] = round(float(np.mean(_ious(cm))), 4)
  out["per_image_fg_iou"] = round(float(np.mean([_ious(c)[1] for c in confusions])), 4)
  out["gt_fg_fraction"] = float(cm[1].sum() / n) if n else 0.0
  out["pred_fg_fraction"] = float(cm[:, 1].sum() / n) if n else 0.0
  return out


def mask_metrics(gt, pred) -> dict:
  """Metrics of predicted vs GT masks in memory.

  Args:
    gt, pred: [N, H, W] / [H, W] arrays or equal-length lists of [H, W] arrays; bool, uint8 (255 =
      foreground, the official rule) or float (>= 0.5 = foreground).
  """
  if isinstance(gt, (list, tuple)) or isinstance(pred, (list, tuple)):
    if len(gt) != len(pred):
      raise ValueError(f"mask_metrics: {len(gt)} GT masks vs {len(pred)} predictions")
    pairs = list(zip(gt, pred))
  else:
    g, p = np.asarray(gt), np.asarray(pred)
    if g.ndim == 2:
      g, p = g[None], p[None]
    if g.shape != p.shape:
      raise ValueError(f"mask_metrics: GT shape {g.shape} != prediction shape {p.shape}")
    pairs = list(zip(g, p))
  return metrics_from_confusions([confusion_matrix(a, b) for a, b in pairs])


def list_pngs(folder) -> list[str]:
  """The folder's `*.png` files in natural sort order (official pairing)."""
  return sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), "*.png")), key=natural_key)


def evaluate_mask_folders(gt_dir, pred_dir) -> dict:
  """Official evaluation of two folders of PNG masks; returns the metrics dict (JSON-able).

  Raises FileNotFoundError / ValueError with a one-line message naming the folder or file.
  """
  for d in (gt_dir, pred_dir):
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d}: not a directory of PNG masks")
  gts, preds = list_pngs(gt_dir), list_pngs(pred_dir)
  if not gts:
    raise ValueError(f"{gt_dir}: no *.png masks")
  if len(gts) != len(preds):
    raise ValueError(f"{gt_dir} has {len(gts)} PNGs but {pred_dir} has {len(preds)}; files are "
                     "paired by natural sort order, so the counts must match")
  confusions = []
  for g, p in zip(gts, preds):
    a, b = read_mask(g), read_mask(p)
    if a.shape != b.shape:
      raise ValueError(f"{p}: size {b.shape[::-1]} differs from its GT {g} {a.shape[::-1]}")
    confusions.append(confusion_matrix(a == 1, b == 1))
  out = metrics_from_confusions(confusions)
  out["gt_dir"], out["pred_dir"] = os.fspath(gt_dir), os.fspath(pred_dir)
  out["first_pair"] = [os.path.basename(gts[0]), os.path.basename(preds[0])]
  return out


def format_table(metrics) -> str:
  """Console table of one metrics dict (per-class rows) or of {name: metrics} (one row each)."""
  if "foreground" in metrics:
    lines = [f"{'':<12}{'IoU':>8}{'F1':>8}{'Prec':>8}{'Recall':>8}{'Acc':>8}"]  # mean: official
    for row in ("foreground", "background", "mean"):
      m = metrics[row]
      lines.append(f"{row:<12}" + "".join(f"{m[f]:>8.4f}" for f in _FIELDS))
    lines.append(f"mIoU {metrics['miou']:.4f}, images {metrics['num_images']}, "
                 f"pixels {metrics['num_pixels']}, "
                 f"per-image fg IoU {metrics['per_image_fg_iou']:.4f}, "
                 f"GT fg fraction {metrics['gt_fg_fraction']:.3f}, "
                 f"predicted fg fraction {metrics['pred_fg_fraction']:.3f}")
    return "\n".join(lines)
  cols = ("fg IoU", "bg IoU", "mIoU", "fg Prec", "fg Rec", "fg F1", "Acc", "img fgIoU", "GT fg")
  width = max([len(str(k)) for k in metrics] + [5]) + 2
  lines = [f"{'':<{width}}" + "".join(f"{c:>10}" for c in cols)]
  for name, m in metrics.items():
    fg = m["foreground"]
    vals = (fg["iou"], m["background"]["iou"], m["miou"], fg["precision"], fg["recall"], fg["f1"],
            fg["accuracy"], m["per_image_fg_iou"])
    lines.append(f"{name:<{width}}" + "".join(f"{v:>10.4f}" for v in vals)
                 + f"{m['gt_fg_fraction']:>10.3f}")
  return "\n".join(lines)


# Overlay colours, chosen for the built-in world (measured on 200k colours sampled from each of its
# ranges: objects hue 320-35 deg, S 0.8-1, V 0.525-1; backgrounds cool hue 110-230 deg or chroma
# <= 0.10, and their mixes). Minimum RGB distance (0-255 units) of a marker to any object colour
# and to any background colour (the visible shift of a marked pixel is strength * that distance):
#   marker                 to objects   to backgrounds
#   cyan    (0, 255, 255)     307.2          26.5
#   blue    (0, 0, 255)       209.1          70.8
#   violet  (128, 0, 255)     136.1         114.0
#   yellow  (255, 255, 0)     100.7         163.2
#   magenta (255, 0, 255)      81.7         186.3
#   red     (255, 0, 0)         4.8         186.2
# False negatives lie on the object: cyan, the farthest from every warm colour (blue, the old
# choice, is second). False positives lie on the background, usually right next to the object, so
# the marker must stand out from the background without looking like the object: of the candidates
# least 100 from every object colour, yellow is the farthest from the backgrounds (red, the old
# choice, is indistinguishable from the objects; magenta comes within 82 of the pink ones). Cyan and
# yellow are 360 apart, so the two kinds of error never look alike.
FALSE_POSITIVE_COLOUR = (255, 255, 0)   # yellow
FALSE_NEGATIVE_COLOUR = (0, 255, 255)   # cyan


def error_overlay(image, pred, gt, strength: float = 0.6) -> np.ndarray:
  """Marks false positives yellow and false negatives cyan on an image (for grids).

  The colours stay visible on the warm objects and the cool/grey backgrounds of the built-in world
  (see FALSE_POSITIVE_COLOUR / FALSE_NEGATIVE_COLOUR for the measurement).

  Args:
    image: [..., H, W, 3] uint8, or float in [-1, 1].
    pred, gt: [..., H, W] masks (bool; uint8 255 = fg; float >= 0.5 = fg).
    strength: blend weight of the marker colour.
  Returns:
    uint8 [..., H, W, 3].
  """
  img = np.asarray(image)
  if img.dtype != np.uint8:
    img = np.floor((np.clip(img.astype(np.float32), -1, 1) + 1) * 127.5 + 0.5)
  img = img.astype(np.float32)
  p, g = _as_binary(pred), _as_binary(gt)
  if p.ndim == img.ndim and p.shape[-1] == 1:
    p, g = p[..., 0], g[..., 0]
  if p.shape != img.shape[:-1] or g.shape != p.shape:
    raise ValueError(f"error_overlay: masks {p.shape}, {g.shape} do not match image {img.shape}")
  out = img.copy()
  for sel, colour in ((p & ~g, FALSE_POSITIVE_COLOUR), (~p & g, FALSE_NEGATIVE_COLOUR)):
    out[sel] = (1 - strength) * img[sel] + strength * np.asarray(colour, np.float32)
  return np.floor(out + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- pairing by stem

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _mask_levels(path) -> tuple[np.ndarray, float]:
  """One mask file -> (values [H, W] as float64, full scale): the grey level, or for colour masks
  the largest of R, G, B (a coloured foreground on black counts); alpha is ignored.

  Full scale is 255 for 8-bit files, 65535 for 16-bit ones, 1 for float ones; for 32-bit integer
  files the smallest of 255, 65535 and the maximum that covers the values.
  """
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.float64), 65535.0
      if mode == "I":
        v = np.asarray(img).astype(np.float64)
        vmax = float(v.max()) if v.size else 0.0
        return v, 255.0 if vmax <= 255 else 65535.0 if vmax <= 65535 else vmax
      if mode == "F":
        v = np.asarray(img).astype(np.float64)
        return np.where(np.isfinite(v), v, 0.0), 1.0
      if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L")).astype(np.float64), 255.0
      rgb = np.asarray(img.convert("RGB"))
      return rgb.max(axis=-1).astype(np.float64), 255.0
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure: unreadable mask
    reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(one_line(f"{os.fspath(path)}: unreadable mask ({reason}); replace or remove "
                             "the file")) from e


def _masks_by_stem(folder, role: str) -> dict:
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise UserError(f"{role}={folder}: not a folder of masks; pass the folder that holds them")
  out = {}
  for name in sorted(os.listdir(folder), key=natural_key):
    if name.startswith(".") or not name.lower().endswith(MASK_EXTENSIONS):
      continue
    stem = os.path.splitext(name)[0]
    if stem in out:
      raise UserError(f"{role}={folder}: two masks share the stem '{stem}' "
                      f"({os.path.basename(out[stem])} and {name}); keep one")
    out[stem] = os.path.join(folder, name)
  if not out:
    kinds = ", ".join(e[1:] for e in MASK_EXTENSIONS)
    raise UserError(f"{role}={folder}: no mask images ({kinds}); pass the folder that holds them")
  return out


def _few(stems) -> str:
  stems = sorted(stems, key=natural_key)
  return ", ".join(stems[:5]) + (f", ... ({len(stems)} in all)" if len(stems) > 5 else "")


def evaluate_prediction_folder(gt_dir, pred_dir) -> dict:
  """Scores a folder of predicted masks against a folder of GT masks, pairing files by STEM.

  Unlike the official `evaluate_mask_folders` (natural-sort pairing, only 255 is foreground):
  - `<gt_dir>/<stem>.<ext>` is paired with `<pred_dir>/<stem>.<ext>` (extensions png, jpg, jpeg,
    bmp, gif, tif, tiff, webp; may differ between the folders; not recursive). Stems present in
    only one folder raise a one-line UserError listing them.
  - Values per folder: when every mask of a folder holds only 0 and 1, the folder is read as 0/1
    (1 = foreground); otherwise foreground is value >= half of full scale (>= 128 for 8-bit,
    >= 32768 for 16-bit, >= 0.5 for float files), so 0/255, anti-aliased and soft masks are all
    thresholded at the middle. Colour masks use the largest of R, G, B; alpha is ignored.
  The metrics are those of `metrics_from_confusions` (same fields as `evaluate_mask_folders`),
  plus 'pairing' ('stem'), 'num_pairs' and 'mask_values' ({'gt': ..., 'pred': ...}: '0/1' or
  'thresholded at half scale').
  """
  gts = _masks_by_stem(gt_dir, "gt_dir")
  preds = _masks_by_stem(pred_dir, "pred_dir")
  missing = [s for s in gts if s not in preds]
  extra = [s for s in preds if s not in gts]
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"{len(missing)} GT mask(s) have no prediction ({_few(missing)})")
    if extra:
      parts.append(f"{len(extra)} prediction(s) have no GT mask ({_few(extra)})")
    raise UserError(f"pred_dir={os.fspath(pred_dir)} vs gt_dir={os.fspath(gt_dir)}: "
                    + " and ".join(parts) + "; masks are paired by file name without extension, "
                    "so both folders need the same names")
  # One pass: per pair, the confusion matrix under each reading (0/1 or half scale) of each folder;
  # the folder-wide reading is known only at the end.
  combos = {(a, b): [] for a in (False, True) for b in (False, True)}
  binary = {"gt": True, "pred": True}
  for stem in gts:  # natural order of the GT stems
    g, g_full = _mask_levels(gts[stem])
    p, p_full = _mask_levels(preds[stem])
    if g.shape != p.shape:
      raise UserError(f"{preds[stem]}: size {p.shape[::-1]} differs from its GT {gts[stem]} "
                      f"{g.shape[::-1]}; write predictions at the GT size")
    binary["gt"] &= bool(np.all((g == 0) | (g == 1)))
    binary["pred"] &= bool(np.all((p == 0) | (p == 1)))
    g_bin = {True: g >= 1, False: g >= g_full / 2}
    p_bin = {True: p >= 1, False: p >= p_full / 2}
    for (a, b), cms in combos.items():
      cms.append(confusion_matrix(g_bin[a], p_bin[b]))
  out = metrics_from_confusions(combos[(binary["gt"], binary["pred"])])
  reading = {True: "0/1", False: "thresholded at half scale"}
  out.update(gt_dir=os.fspath(gt_dir), pred_dir=os.fspath(pred_dir), pairing="stem",
             num_pairs=len(gts), mask_values={k: reading[v] for k, v in binary.items()})
  return out
