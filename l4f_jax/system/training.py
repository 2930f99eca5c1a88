"""Pieces of the Labels4Free training program (experiments.train) that tests use directly.

PRNG: every random draw of a run derives from `--seed` through named streams,

  root = jax.random.key(seed)
  stream_key(seed, name) = fold_in(root, STREAMS[name])   alpha_init, d_init, w_avg, grid, eval
  iteration_key(seed, i) = fold_in(stream_key(seed, 'train'), i)   for iteration i = 0 .. iter

and `step.sample_inputs(iteration_key(seed, i), global_batch, G)` draws iteration i's latents and
noise for the GLOBAL batch inside the jitted step (from the step counter held in the state), so a
run's randomness depends on (seed, i) only: not on the device or host count, and not on whether
the run was interrupted and resumed. The real batches come from `data.Loader` (seed, i) likewise.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from l4f_jax.errors import UserError
from l4f_jax.method import step as step_lib
from l4f_jax.models.alpha import AlphaNetwork, select_features
from l4f_jax.models.stylegan2 import N_MEAN_LATENT, Discriminator, Generator, mean_latent
from l4f_jax.system import sharding

STREAMS = {"alpha_init": 0, "d_init": 1, "w_avg": 2, "grid": 3, "train": 4, "eval": 5, "pairs": 6,
           "student_init": 7, "student_grid": 8, "invert": 9, "edit": 10}


def stream_key(seed: int, name: str):
  return jax.random.fold_in(jax.random.key(seed), STREAMS[name])


def iteration_key(seed: int, i):
  """Key of iteration i (i may be traced)."""
  return jax.random.fold_in(stream_key(seed, "train"), i)


def w_avg(generator: Generator, g_params, seed: int):
  """The one w-bar of every program: the mean of w over N_MEAN_LATENT z drawn from the 'w_avg'
  stream of `seed` (Labels4Free's choice; the checkpoint's latent_avg is not used). [1, style_dim]."""
  return jax.jit(lambda p, k: mean_latent(generator, p, k, N_MEAN_LATENT))(
      g_params, stream_key(seed, "w_avg"))


def generator_w_avg(gen, seed: int):
  """The w-bar of a loaded generator (`weights.LoadedGenerator`): the stored 'latent_avg' when its
  config says truncation uses it (NVIDIA's tracked `w_avg`, stylegan2-ada-pytorch
  training/networks.py MappingNetwork), else `w_avg` (the mean over N_MEAN_LATENT sampled z, the
  rosinality / Labels4Free choice). [1, style_dim]."""
  if gen.config.get("truncation_center") == "w_avg":
    return jnp.asarray(gen.trees["latent_avg"], jnp.float32).reshape(1, -1)
  return w_avg(gen.module, gen.params, seed)


NOISE_MODES = ("random", "const")
NOISE_MODE_HELP = ("Noise maps: 'random' (drawn per sample) or 'const' (the generator's stored "
                   "maps for every sample: NVIDIA's noise_mode='const').")


def generator_noise(gen, mode: str, flag: str = "--noise_mode"):
  """None ('random': drawn per sample) or the stored noise maps ('const'), [1, r, r, 1] each."""
  if mode == "random":
    return None
  if "noises" not in gen.trees:
    raise UserError(f"{flag}=const: {gen.path} stores no noise maps (converted rosinality and "
                    f"NVIDIA generators have them); use {flag}=random")
  return [jnp.asarray(m, jnp.float32) for m in gen.trees["noises"]]


def stddev_group(local_batch: int, group: int = 4) -> int:
  """rosinality's minibatch-stddev group size min(B, group) for a per-device batch B."""
  return min(local_batch, group)


def init_alpha(alpha_net: AlphaNetwork, generator: Generator, key) -> Any:
  """A's parameters (PyTorch Conv2d default init) for the feature shapes of `generator`."""
  def features():
    g_params = generator.init(jax.random.key(0), jnp.zeros((1, generator.style_dim)),
                              noise_key=jax.random.key(0))["params"]
    _, feats = generator.apply({"params": g_params}, jnp.zeros((1, generator.style_dim)),
                               noise_key=jax.random.key(0))
    return select_features(feats, generator.size)
  shapes = jax.eval_shape(features)
  return jax.jit(alpha_net.init)(key, [jnp.zeros(s.shape, s.dtype) for s in shapes])["params"]


def init_discriminator(disc: Discriminator, key) -> Any:
  """D's parameters (rosinality init), from scratch."""
  x = jnp.zeros((1, disc.size, disc.size, 3))
  return jax.jit(disc.init)(key, x)["params"]


def make_train_step(models: step_lib.Models, cfg: step_lib.L4FConfig, mesh, *, global_batch: int,
                    seed: int, do_r1: bool):
  """jit(fn(state, g_params, w_avg, real) -> (state, metrics)), state donated.

  `real` is the global [global_batch, S, S, 3] batch sharded over the mesh's data axis; state,
  g_params and w_avg are replicated. Iteration i = state.step draws its inputs from
  `iteration_key(seed, i)` inside the program, so the loop needs no host work besides the batch.
  Each device runs `step.train_step` on its rows (its own minibatch-stddev groups, split further
  into `cfg.stddev_chunks` emulated devices) and averages gradients and metrics over the mesh.
  """
  per_device = functools.partial(step_lib.train_step, models=models, cfg=cfg, do_r1=do_r1,
                                 axis_name=sharding.AXIS)
  rep, shd = sharding.REPLICATED, sharding.SHARDED
  sharded = sharding.data_parallel(per_device, mesh, in_specs=(rep, rep, rep, shd, shd),
                                   out_specs=(rep, rep))

  def fn(state, g_params, w_avg, real):
    inputs = step_lib.sample_inputs(iteration_key(seed, state.step), global_batch,
                                    models.generator, real.dtype)
    return sharded(state, g_params, w_avg, real, inputs)

  return jax.jit(fn, donate_argnums=0)
