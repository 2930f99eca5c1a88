"""The one parameter-update mechanism of every trainer: Adam and "grad -> device mean -> update".

  tx = lazy_adam(lr, reg_every=16)                     # rosinality / Labels4Free scaling
  mean = device_mean(axis_name)                        # pmean under shard_map, identity otherwise
  (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(varying(params, axis_name))
  params, opt_state = apply_update(tx, params, grads, opt_state, mean)

Used by the Labels4Free step (A and D), the StyleGAN2 pretraining step (G and D) and the student
segmenter step.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import optax

from l4f_jax.ops.layers import varying_axes


def lazy_adam(lr: float, reg_every: Optional[int] = None, b1: float = 0.0, b2: float = 0.99,
              eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam with rosinality's lazy-regularisation scaling c = k / (k + 1): lr * c, b2 ** c.

  `reg_every=None` is plain Adam(lr, b1, b2). StyleGAN2 and Labels4Free use b1 = 0, b2 = 0.99.
  """
  c = 1.0 if reg_every is None else reg_every / (reg_every + 1)
  return optax.adam(lr * c, b1=b1, b2=b2 ** c, eps=eps)


def axes(axis_name) -> tuple:
  """axis_name (None, a name, or a tuple of names) as a tuple."""
  if axis_name is None:
    return ()
  return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def device_mean(axis_name) -> Callable[[Any], Any]:
  """The DDP average: `pmean` over the mesh axes under shard_map, identity on one device."""
  names = axes(axis_name)
  return (lambda tree: jax.lax.pmean(tree, names)) if names else (lambda tree: tree)


def varying(tree, axis_name):
  """Marks replicated parameters device-varying, so that under shard_map(check_vma=True) `jax.grad`
  gives each device its local gradient (rather than an implicit psum); `device_mean` then averages."""
  names = axes(axis_name)
  if not names:
    return tree

  def cast(x):
    missing = tuple(a for a in names if a not in varying_axes(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(cast, tree)


def apply_update(tx: optax.GradientTransformation, params, grads, opt_state,
                 mean: Callable[[Any], Any] = lambda t: t):
  """(new params, new optimizer state) after averaging `grads` over devices with `mean`."""
  updates, opt_state = tx.update(mean(grads), opt_state, params)
  return optax.apply_updates(params, updates), opt_state
