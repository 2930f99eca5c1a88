"""StyleGAN2 pretraining (rosinality recipe) as a library program: `train_and_evaluate(config)`.

Trains the project's small generator for its built-in world (`experiments/flags/shapes_gan.flags`).
Sharded over every device (jax.shard_map over a 1-D mesh), Orbax checkpoints in `workdir`
(re-running resumes), sample grids of the EMA generator every `sample_every` steps and, at the end,
the EMA generator, G and D exported in the converted-weight format (`export`), which
experiments.train / sample / evaluate read like converted PyTorch weights.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.config import option, to_dict
from l4f_jax.method import gan
from l4f_jax.models.stylegan2 import Discriminator, Generator, make_noise
from l4f_jax.system import data as data_lib
from l4f_jax.io import files, images
from l4f_jax.system import loop, sharding, training, weights
from l4f_jax.errors import UserError

ARCH_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max")


@dataclasses.dataclass(frozen=True)
class GANRunConfig:
  dataset: str = option("workspace/datasets/l4f_shapes", "Prepared dataset directory "
                        f"({data_lib.PREPARE_HINT}).", nonempty=True)
  prepare_shapes: int = option(0, "If > 0 and --dataset (…/l4f_shapes) is missing, build the "
                               "built-in dataset with this many images at --shapes_size.", ge=0)
  shapes_size: int = option(64, "Resolution of l4f_shapes when --prepare_shapes builds it.", ge=8)
  workdir: str = option("workspace/runs/gan", "Checkpoints, logs and sample grids.",
                        nonempty=True)
  export: Optional[str] = option(None, "Write the trained weights (converted-weight format) here.")
  overwrite: bool = option(False, "Replace an existing run in --workdir and an existing --export.")
  style_dim: int = option(512, "Latent size.", ge=1)
  n_mlp: int = option(8, "Mapping layers.", ge=1)
  channel_multiplier: int = option(2, "rosinality channel multiplier.", ge=1)
  channel_base: Optional[int] = option(None, "Override: channels = min(channel_base // res, "
                                       "channel_max).", ge=1)
  channel_max: int = option(512, "Maximum channels per layer.", ge=1)
  lr_mlp: float = option(0.01, "Mapping network learning-rate multiplier.", gt=0)
  batch: int = option(32, "Global batch (split evenly over devices).", ge=1)
  iters: int = option(10000, "Training iterations.", ge=1)
  method: gan.GANConfig = gan.GANConfig()
  seed: int = option(0, "Seed for init, latents, noise and data order.")
  num_devices: Optional[int] = option(None, "Use only the first N devices (default: all).", ge=1)
  log_every: int = option(50, "Console/TensorBoard interval.", ge=1)
  sample_every: int = option(500, "Sample-grid interval.", ge=1)
  save_every: int = option(500, "Checkpoint interval.", ge=1)
  keep: int = option(2, "Checkpoints to keep (0 = all).", ge=0)


def train_and_evaluate(cfg: GANRunConfig) -> dict:
  """Trains G and D; returns {'steps', 'export' (or None)}."""
  if cfg.export:  # every destination is checked before any work
    if os.path.lexists(cfg.export) and not cfg.overwrite:
      raise UserError(f"--export={cfg.export} already exists; choose a new directory or pass "
                      "--overwrite")
    files.check_writable_dir(cfg.export, "--export")
    files.check_disjoint(cfg.export, [("--dataset", cfg.dataset)], "--export")
  files.check_writable_dir(cfg.workdir, "--workdir")
  mesh = sharding.make_mesh(cfg.num_devices)
  n_dev = mesh.devices.size
  if cfg.batch % n_dev:
    raise UserError(f"--batch={cfg.batch} must be divisible by the {n_dev} devices")
  try:
    source, size = data_lib.prepare_and_open(cfg.dataset, cfg.prepare_shapes, cfg.shapes_size)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None
  loader = data_lib.Loader(source, cfg.batch, seed=cfg.seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
  arch = dict(size=size, style_dim=cfg.style_dim, n_mlp=cfg.n_mlp,
              channel_multiplier=cfg.channel_multiplier, channel_base=cfg.channel_base,
              channel_max=cfg.channel_max, lr_mlp=cfg.lr_mlp)
  G = Generator(**arch)
  D = Discriminator(size, channel_multiplier=cfg.channel_multiplier,
                    channel_base=cfg.channel_base, channel_max=cfg.channel_max)
  run = loop.open_run(cfg.workdir, program="pretrain_gan", config=to_dict(cfg),
                      identity={k: arch[k] for k in ARCH_KEYS}, keep=cfg.keep,
                      overwrite=cfg.overwrite, resume_keys=ARCH_KEYS,
                      inputs=[("--dataset", cfg.dataset)])
  try:
    return _train(cfg, run, G, D, arch, mesh, loader)
  finally:
    run.close()


def _train(cfg, run, G, D, arch, mesh, loader) -> dict:
  key = jax.random.key(cfg.seed)
  k_g, k_d, k_sample, k_train = jax.random.split(key, 4)
  g_params = G.init(k_g, jnp.zeros((1, G.style_dim)), noise_key=k_g)["params"]
  d_params = D.init(k_d, jnp.zeros((4, G.size, G.size, 3)))["params"]
  state = sharding.replicate(gan.init_gan_state(cfg.method, g_params, d_params), mesh)
  state, start = run.restore_or(state)

  steps = {}

  def step_fn(i, state, batch):
    do_r1 = i % cfg.method.d_reg_every == 0
    do_pl = cfg.method.pl_weight > 0 and i % cfg.method.g_reg_every == 0
    if (do_r1, do_pl) not in steps:
      per_device = functools.partial(gan.gan_train_step, G=G, D=D, cfg=cfg.method, do_r1=do_r1,
                                     do_pl=do_pl, axis_name=sharding.AXIS)
      fn = sharding.data_parallel(per_device, mesh,
                                  in_specs=(sharding.REPLICATED, sharding.SHARDED,
                                            sharding.REPLICATED),
                                  out_specs=(sharding.REPLICATED, sharding.REPLICATED))
      steps[(do_r1, do_pl)] = jax.jit(fn, donate_argnums=(0,))
    real = sharding.shard_host_batch(batch["image"], mesh)
    return steps[(do_r1, do_pl)](state, real, jax.random.fold_in(k_train, i))

  sample_z = jax.random.normal(k_sample, (32, G.style_dim))
  sample_noise = make_noise(jax.random.fold_in(k_sample, 1), G.size, 32)
  sample_fn = jax.jit(lambda g_ema: G.apply({"params": g_ema}, sample_z, noise=sample_noise)[0])

  def on_sample(i, state):
    imgs = np.asarray(jax.device_get(sample_fn(state.g_ema)))
    if jax.process_index() == 0:
      images.save_png(run.path("samples", f"{i + 1:06d}.png"),
                      images.make_grid([imgs[:16], imgs[16:]]))

  batches = loader.iterate(start_step=start, num_steps=max(cfg.iters - start, 0))
  state = loop.train_loop(state, batches, step_fn, run=run, start=start, end=cfg.iters,
                          log_every=cfg.log_every, save_every=cfg.save_every,
                          sample_every=cfg.sample_every, on_sample=on_sample,
                          console_keys=("d_loss", "g_loss", "real_score", "fake_score", "r1"),
                          sticky_keys=("r1", "path_penalty"))
  def trees(s):
    host = sharding.to_host(s)
    return {"g_ema": host.g_ema, "g": host.g_params, "d": host.d_params,
            "latent_avg": np.asarray(training.w_avg(G, host.g_ema, cfg.seed))}

  done = int(jax.device_get(state.step))
  config = dict(arch, source=f"experiments.pretrain_gan step {done}", kind="stylegan2")
  loop.finish_and_export(run, state, cfg.export, config, trees, overwrite=cfg.overwrite)
  return {"steps": done, "export": cfg.export}
