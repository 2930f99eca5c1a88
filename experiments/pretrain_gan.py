r"""Train a small StyleGAN2 (rosinality recipe) on a prepared dataset.

  python -m experiments.pretrain_gan --flagfile=experiments/flags/shapes_gan.flags

Sharded over every device (jax.shard_map over a 1-D mesh), checkpointed with Orbax in --workdir
(re-running the same command resumes), sample grids of the EMA generator every --sample_every steps,
and, at the end, the EMA generator, G and D exported in the project's converted-weight format
(--export), which experiments.train / sample / evaluate read like converted PyTorch weights.
"""
from __future__ import annotations

import functools
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "workspace/datasets/l4f_shapes", "Prepared dataset directory "
                    "(python -m experiments.prepare_data).")
flags.DEFINE_integer("prepare_shapes", 0, "If > 0 and --dataset (…/l4f_shapes) is missing, build "
                     "the built-in l4f_shapes dataset with this many images at --shapes_size.")
flags.DEFINE_integer("shapes_size", 64, "Resolution of l4f_shapes when --prepare_shapes builds it.")
flags.DEFINE_string("workdir", "workspace/runs/gan", "Checkpoints, logs and sample grids.")
flags.DEFINE_string("export", None, "Write the trained weights (converted-weight format) here.")
flags.DEFINE_integer("style_dim", 512, "Latent size.")
flags.DEFINE_integer("n_mlp", 8, "Mapping layers.")
flags.DEFINE_integer("channel_multiplier", 2, "rosinality channel multiplier.")
flags.DEFINE_integer("channel_base", None, "Override: channels = min(channel_base // res, channel_max).")
flags.DEFINE_integer("channel_max", 512, "Maximum channels per layer.")
flags.DEFINE_float("lr_mlp", 0.01, "Mapping network learning-rate multiplier.")
flags.DEFINE_integer("batch", 32, "Global batch (split evenly over devices).")
flags.DEFINE_integer("iters", 10000, "Training iterations.")
flags.DEFINE_float("lr", 0.002, "Base learning rate.")
flags.DEFINE_float("r1", 10.0, "R1 weight gamma.")
flags.DEFINE_integer("d_reg_every", 16, "Lazy R1 interval.")
flags.DEFINE_integer("g_reg_every", 4, "Lazy path-length interval (and Adam scaling).")
flags.DEFINE_float("mixing", 0.9, "Style-mixing probability.")
flags.DEFINE_float("ema_kimg", 10.0, "EMA half-life of G in thousands of images.")
flags.DEFINE_float("pl_weight", 0.0, "Path-length regularisation weight (rosinality: 2; 0 = off).")
flags.DEFINE_integer("seed", 0, "Seed for init, latents, noise and data order.")
flags.DEFINE_integer("num_devices", None, "Use only the first N devices (default: all).")
flags.DEFINE_integer("log_every", 50, "Console/TensorBoard interval.")
flags.DEFINE_integer("sample_every", 500, "Sample-grid interval.")
flags.DEFINE_integer("save_every", 500, "Checkpoint interval.")
flags.DEFINE_integer("keep", 2, "Checkpoints to keep.")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from l4f_jax.method import gan
  from l4f_jax.models.stylegan2 import Discriminator, Generator, make_noise, mean_latent
  from l4f_jax.system import data as data_lib
  from l4f_jax.system import images, metrics_log, sharding, weights
  from l4f_jax.system.checkpoints import Checkpointer

  metrics_log.quiet_library_logs()
  # ---------------------------------------------------------------- Devices and data.
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(FLAGS.num_devices)
  n_dev = mesh.devices.size
  if FLAGS.batch % n_dev:
    raise app.UsageError(f"--batch={FLAGS.batch} must be divisible by the {n_dev} devices")
  try:
    source, size = data_lib.prepare_and_open(FLAGS.dataset, FLAGS.prepare_shapes, FLAGS.shapes_size)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  loader = data_lib.Loader(source, FLAGS.batch, seed=FLAGS.seed, process_index=jax.process_index(),
                           process_count=jax.process_count())

  # ---------------------------------------------------------------- Models and state.
  arch = dict(size=size, style_dim=FLAGS.style_dim, n_mlp=FLAGS.n_mlp,
              channel_multiplier=FLAGS.channel_multiplier, channel_base=FLAGS.channel_base,
              channel_max=FLAGS.channel_max, lr_mlp=FLAGS.lr_mlp)
  G = Generator(**arch)
  D = Discriminator(size, channel_multiplier=FLAGS.channel_multiplier, channel_base=FLAGS.channel_base,
                    channel_max=FLAGS.channel_max)
  cfg = gan.GANConfig(lr=FLAGS.lr, r1=FLAGS.r1, d_reg_every=FLAGS.d_reg_every,
                      g_reg_every=FLAGS.g_reg_every, mixing=FLAGS.mixing, ema_kimg=FLAGS.ema_kimg,
                      pl_weight=FLAGS.pl_weight)
  key = jax.random.key(FLAGS.seed)
  k_g, k_d, k_sample, k_train = jax.random.split(key, 4)
  g_params = G.init(k_g, jnp.zeros((1, G.style_dim)), noise_key=k_g)["params"]
  d_params = D.init(k_d, jnp.zeros((4, size, size, 3)))["params"]
  state = sharding.replicate(gan.init_gan_state(cfg, g_params, d_params), mesh)

  run_flags = {f.name: f.value for f in FLAGS.get_flags_for_module(__name__)} | {"size": size}
  ckpt = Checkpointer(os.path.join(FLAGS.workdir, "checkpoints"), keep=FLAGS.keep)
  start = 0
  if ckpt.latest_step() is not None:
    meta = ckpt.restore_meta()
    changed = {k: (meta["flags"].get(k), v) for k, v in run_flags.items()
               if k in ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base",
                        "channel_max") and meta["flags"].get(k) != v}
    if changed:
      raise app.UsageError(f"--workdir={FLAGS.workdir} holds a run with a different architecture "
                           f"{changed}; use a new --workdir")
    start, state, _ = ckpt.restore(state)
    logging.info("resumed from step %d", start)
  if jax.process_index() == 0:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    metrics_log.write_json(os.path.join(FLAGS.workdir, "flags.json"), run_flags)

  # ---------------------------------------------------------------- The sharded step.
  P = sharding

  def make_step(do_r1, do_pl):
    per_device = functools.partial(gan.gan_train_step, G=G, D=D, cfg=cfg, do_r1=do_r1, do_pl=do_pl,
                                   axis_name=P.AXIS)
    fn = P.data_parallel(per_device, mesh, in_specs=(P.REPLICATED, P.SHARDED, P.REPLICATED),
                         out_specs=(P.REPLICATED, P.REPLICATED))
    return jax.jit(fn, donate_argnums=(0,))

  steps = {}
  sample_z = jax.random.normal(k_sample, (32, G.style_dim))
  sample_noise = make_noise(jax.random.fold_in(k_sample, 1), size, 32)

  @jax.jit
  def sample_fn(g_ema):
    img, _ = G.apply({"params": g_ema}, sample_z, noise=sample_noise)
    return img

  writer = metrics_log.MetricsWriter(os.path.join(FLAGS.workdir, "logs"))
  progress = metrics_log.Progress(start, FLAGS.iters)

  # ---------------------------------------------------------------- Loop.
  batches = loader.iterate(start_step=start, num_steps=max(FLAGS.iters - start, 0))
  metrics = None
  for step, batch in batches:
    do_r1 = step % cfg.d_reg_every == 0
    do_pl = cfg.pl_weight > 0 and step % cfg.g_reg_every == 0
    if (do_r1, do_pl) not in steps:
      steps[(do_r1, do_pl)] = make_step(do_r1, do_pl)
    real = P.shard_host_batch(batch["image"], mesh)
    state, metrics = steps[(do_r1, do_pl)](state, real, jax.random.fold_in(k_train, step))
    done = step + 1
    if done % FLAGS.log_every == 0 or done == FLAGS.iters:
      m = jax.device_get(metrics)
      writer.write(done, m)
      metrics_log.log_console(progress.line(done) + "  " +
                              "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(m.items())))
    if done % FLAGS.sample_every == 0 or done == FLAGS.iters:
      imgs = np.asarray(jax.device_get(sample_fn(state.g_ema)))
      if jax.process_index() == 0:
        images.save_png(os.path.join(FLAGS.workdir, "samples", f"{done:06d}.png"),
                        images.make_grid([imgs[:16], imgs[16:]]))
    if done % FLAGS.save_every == 0 or done == FLAGS.iters:
      ckpt.save(done, state, {"flags": run_flags, "step": done}, force=True)
  ckpt.close()
  writer.close()

  # ---------------------------------------------------------------- Export.
  if FLAGS.export and jax.process_index() == 0:
    host = sharding.to_host(state)
    g_ema = host.g_ema
    w_avg = np.asarray(mean_latent(G, g_ema, jax.random.key(FLAGS.seed + 1), 4096))
    config = dict(arch, source=f"experiments.pretrain_gan step {FLAGS.iters}", kind="stylegan2")
    weights.save_weights(FLAGS.export, config, {"g_ema": g_ema, "g": host.g_params, "d": host.d_params,
                                                "latent_avg": w_avg}, overwrite=True)
    logging.info("exported weights to %s", FLAGS.export)


if __name__ == "__main__":
  app.run(main)
