"""The one hard-mask rule: foreground where alpha > 0.9.

This is the official inference rule of Labels4Free (RameenAbdal/Labels4Free, `test_sample.py`:
the mask is `alpha > args.th`, strict, with `--th` 0.9 by default). Every hard mask of this
repository (A's samples and pairs, inversion and editing masks, the student's exported masks,
training monitors and grids) is `hard_mask(alpha, threshold)`; a program's --threshold only moves
the threshold.
"""
from __future__ import annotations

HARD_MASK_THRESHOLD = 0.9


def hard_mask(alpha, threshold: float = HARD_MASK_THRESHOLD):
  """Boolean foreground of a soft mask (NumPy or jax arrays, any shape): alpha > threshold."""
  return alpha > threshold


UNDECIDED = (0.1, 0.9)


def undecided(alpha):
  """Boolean pixels of a soft mask that are neither background nor foreground: 0.1 < alpha < 0.9
  (the band that `experiments.make_pairs --max_undecided` and `evaluate` report)."""
  return (alpha > UNDECIDED[0]) & (alpha < UNDECIDED[1])
