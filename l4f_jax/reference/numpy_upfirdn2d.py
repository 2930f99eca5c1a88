"""Literal NumPy transcription of rosinality's ``upfirdn2d_native`` (reference for parity tests).

Algorithm (rosinality/stylegan2-pytorch, op/upfirdn2d.py: upfirdn2d_native), per channel independently:
  1. zero insertion: after every input sample append ``up - 1`` zeros (length H*up);
  2. pad with (p0, p1) on each axis; negative values crop;
  3. true convolution with the kernel (= correlation with the spatially flipped kernel), VALID;
  4. keep every ``down``-th sample.
"""
import numpy as np


def _pads(pad):
  """Returns (x0, x1, y0, y1); a 2-tuple applies the same pair to both axes."""
  if len(pad) == 2:
    return pad[0], pad[1], pad[0], pad[1]
  if len(pad) == 4:
    return tuple(pad)
  raise ValueError(f"pad must have 2 or 4 entries, got {pad!r}")


def _zero_insert(x, up):
  """[..., H, W] -> [..., H*up, W*up]: each sample is followed by up-1 zeros on both axes."""
  h, w = x.shape[-2:]
  out = np.zeros(x.shape[:-2] + (h * up, w * up), dtype=x.dtype)
  out[..., ::up, ::up] = x
  return out


def _pad_or_crop_axis(a, axis, lo, hi):
  """Zero-pads (positive) or crops (negative) one axis."""
  widths = [(0, 0)] * a.ndim
  widths[axis] = (max(lo, 0), max(hi, 0))
  a = np.pad(a, widths)
  n = a.shape[axis]
  sl = [slice(None)] * a.ndim
  sl[axis] = slice(max(-lo, 0), n - max(-hi, 0))
  return a[tuple(sl)]


def _true_conv_valid(x, kernel):
  """VALID true convolution over the last two axes.

  out[..., i, j] = sum_{p,q} x[..., i+p, j+q] * kernel[kh-1-p, kw-1-q], i.e. a correlation with the
  flipped kernel; written as a loop over the kernel taps.
  """
  kh, kw = kernel.shape
  h, w = x.shape[-2:]
  oh, ow = h - kh + 1, w - kw + 1
  flipped = kernel[::-1, ::-1]
  out = np.zeros(x.shape[:-2] + (max(oh, 0), max(ow, 0)), dtype=x.dtype)
  for p in range(kh):
    for q in range(kw):
      out += flipped[p, q] * x[..., p:p + oh, q:q + ow]
  return out


def upfirdn2d_np(x, kernel, up=1, down=1, pad=(0, 0)):
  """Upsample, FIR-filter, downsample an NCHW array [B, C, H, W] with a 2-D kernel.

  Every channel is filtered independently. ``pad`` is (p0, p1) for both axes or (x0, x1, y0, y1).
  Output size: (H*up + y0 + y1 - kh + down) // down (likewise for W).
  """
  x = np.asarray(x)
  kernel = np.asarray(kernel)
  if x.ndim != 4 or kernel.ndim != 2:
    raise ValueError("expected x [B, C, H, W] and a 2-D kernel")
  x0, x1, y0, y1 = _pads(pad)
  dtype = np.result_type(x, kernel)
  x = x.astype(dtype)
  kernel = kernel.astype(dtype)
  out = _zero_insert(x, up)                   # 1. zero insertion -> H*up
  out = _pad_or_crop_axis(out, 2, y0, y1)     # 2. pad / crop (rows)
  out = _pad_or_crop_axis(out, 3, x0, x1)     #    pad / crop (columns)
  out = _true_conv_valid(out, kernel)         # 3. true convolution, VALID
  return np.ascontiguousarray(out[:, :, ::down, ::down])  # 4. keep every down-th sample
