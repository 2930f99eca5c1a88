r"""Labels4Free training: an alpha network A (and a weak D) on top of a frozen StyleGAN2 generator.

  python -m experiments.train --flagfile=experiments/flags/ffhq.flags
  python -m experiments.train --flagfile=experiments/flags/lsun_cat.flags --emulate_devices=4

Mirrors the official train.py (labels4free.md §8, §10): the loop runs iterations i = 0 .. --iter
(--iter + 1 in all); --batch is PER DEVICE and the global batch is --batch x devices. Each device
runs D's minibatch stddev (groups of min(batch, 4)) and the R1 quirk term on its own rows, as the
official DDP runs did; --emulate_devices=E lets fewer devices reproduce an E-device run exactly.

Outputs in --workdir (re-running the same command resumes from the latest checkpoint):
  flags.json                resolved flags and the run description (written at start)
  checkpoints/<n>/          Orbax: alpha params + EMA, D params, both Adam states, step n
                            (= iterations done); every --save_every and at the end, last --keep
  logs/metrics.jsonl        losses and alpha monitors every --log_every iterations (+ TensorBoard)
  samples/<i>.png           image / alpha / mask / composite / background grid after iteration i,
                            every --model_save_freq (psi 0.5, independent background latents)
  alpha/                    the final A in the converted-weight format (for sample / evaluate)
  eval.json, eval_errors.png    with --eval_samples on the built-in l4f_shapes data: hard-mask
                            metrics against the colour oracle of the generated images
PRNG: see l4f_jax/system/training.py (everything derives from --seed and the iteration index).
"""
from __future__ import annotations

import collections
import json
import math
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
CONVERT_CMD = "python -m experiments.convert --src=<stylegan2 .pt> --dst=<dir>"
PREPARE_CMD = "python -m experiments.prepare_data --src=<image folder> --name=<name> --size=<px>"

# Inputs and outputs.
flags.DEFINE_string("generator", "experiments/assets/shapes64",
                    f"Converted generator weight directory ({CONVERT_CMD}).")
flags.DEFINE_integer("prepare_shapes", 0, "If > 0 and --dataset (…/l4f_shapes) is missing, build "
                     "the built-in l4f_shapes dataset with this many images at the generator's size.")
flags.DEFINE_string("dataset", "workspace/datasets/l4f_shapes",
                    f"Prepared dataset directory ({PREPARE_CMD}).")
flags.DEFINE_string("workdir", "workspace/runs/l4f", "Checkpoints, logs, sample grids, export.")
# The method (official train.py names and defaults).
flags.DEFINE_integer("iter", 1001, "Last iteration index; the loop runs iter + 1 iterations.")
flags.DEFINE_integer("batch", 16, "Batch PER DEVICE (global batch = batch x devices).")
flags.DEFINE_float("lr", 2e-4, "Base learning rate (A: lr*4/5, D: lr*16/17).")
flags.DEFINE_float("r1", 10.0, "R1 weight gamma.")
flags.DEFINE_integer("d_reg_every", 16, "Lazy R1 interval (R1 at i % d_reg_every == 0).")
flags.DEFINE_integer("g_reg_every", 4, "Only scales A's Adam (lr, beta2) as the official code.")
flags.DEFINE_float("loss_multiplier", 1.2, "lambda: weight of binarization + fg coverage.")
flags.DEFINE_float("trunc", 1.0, "Truncation psi of the foreground pass during training.")
flags.DEFINE_float("bg_coverage_wt", 0.0, "w_bg: weight of the background-coverage term.")
flags.DEFINE_float("bg_coverage_value", 0.75, "phi_bg of the background-coverage term.")
flags.DEFINE_float("fg_coverage_value", 0.25, "phi_fg of the foreground-coverage term.")
flags.DEFINE_float("sat_weight", 1.0, "Weight of A's GAN loss.")
flags.DEFINE_float("r1_quirk_weight", 1.0, "q in the official R1 step's + q*D(real)[0] "
                   "(1.0 official, 0.0 rosinality).")
flags.DEFINE_enum("background_mode", "auto", ["auto", "conv1", "input"],
                  "G_bg: auto = official (zero the constant input at 512 px, else conv1's output).")
flags.DEFINE_bool("use_disc", False, "Start D from the weights' 'd' (official: LSUN-Car).")
flags.DEFINE_bool("reproduce_model", False, "Official --reproduce_model: recorded in the run and "
                  "export only (A always uses the repro names; its init is seeded by --seed).")
# Pictures, logs, checkpoints.
flags.DEFINE_integer("n_sample", 64, "Samples per grid (0 = no grids).")
flags.DEFINE_integer("model_save_freq", 100, "Grid interval (official: samples + checkpoint).")
flags.DEFINE_integer("save_every", 100, "Checkpoint interval in iterations.")
flags.DEFINE_integer("keep", 2, "Checkpoints to keep (0 = all).")
flags.DEFINE_integer("log_every", 10, "Metrics interval (the only host syncs of the loop).")
flags.DEFINE_integer("eval_samples", 0, "At the end, score this many hard masks against the "
                     "l4f_shapes colour oracle (built-in dataset only).")
flags.DEFINE_integer("seed", 0, "Seed of A/D init, w_avg, latents, noise and data order.")
# Devices and hosts.
flags.DEFINE_integer("num_devices", None, "Use only the first N devices (one process only).")
flags.DEFINE_integer("emulate_devices", 0, "Behave as this many devices (a multiple of those in "
                     "use): global batch and stddev groups of an E-device run (0 = off).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU hosts; TPU pods, "
                    "SLURM and Open MPI need none).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of G and D "
                  "(A, losses and optimizers stay float32).")

N_MEAN_LATENT = 4096
SAMPLE_PSI, THRESHOLD = 0.5, 0.9  # official sampling / inference (test_sample.py)
SAMPLE_BATCH, GRID_COLS, EVAL_GRID = 8, 8, 16


def _check_flags() -> None:
  """Cheap value checks, before any device work."""
  positive = ("batch", "d_reg_every", "g_reg_every", "model_save_freq", "save_every", "log_every")
  for name in positive:
    if FLAGS[name].value < 1:
      raise app.UsageError(f"--{name}={FLAGS[name].value} must be >= 1")
  for name in ("iter", "n_sample", "keep", "eval_samples", "emulate_devices"):
    if FLAGS[name].value < 0:
      raise app.UsageError(f"--{name}={FLAGS[name].value} must be >= 0")
  if FLAGS.num_devices is not None and FLAGS.num_devices < 1:
    raise app.UsageError(f"--num_devices={FLAGS.num_devices} must be >= 1 (or unset)")
  if FLAGS.lr <= 0 or FLAGS.trunc <= 0:
    raise app.UsageError(f"--lr={FLAGS.lr} and --trunc={FLAGS.trunc} must be > 0")
  multi = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in multi) and any(v is None for v in multi):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id go together; "
                         "pass all three (e.g. --coordinator_address=host0:1234 --num_processes=2 "
                         "--process_id=0) or none")


def _dataset_name(path: str) -> str:
  from l4f_jax.system import data as data_lib
  try:
    with open(os.path.join(data_lib.find_dataset_dir(path), "dataset_info.json")) as f:
      return json.load(f).get("name", "")
  except (OSError, ValueError):
    return ""


def export_alpha(dst: str, config: dict, alpha_params) -> None:
  """Writes A in the converted-weight format from process 0 (every process must call this: the
  others wait at a barrier, so no process reads or exits before the export is in place)."""
  import jax
  import numpy as np

  from l4f_jax.system import weights
  if jax.process_index() == 0:  # save_weights writes from the calling process alone
    weights.save_weights(dst, config, {"alpha": jax.tree.map(np.asarray, alpha_params)},
                         overwrite=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("l4f_export_alpha")


def _grid_columns(out: dict) -> dict:
  """Rows of a sample grid, GRID_COLS samples per row group (labelled 'image 8-15' etc.)."""
  names = (("image", "image"), ("alpha", "alpha"), ("mask", "hard_mask"),
           ("composite", "composite"), ("background", "background"))
  n = len(out["image"])
  cols = {}
  for s in range(0, n, GRID_COLS):
    tag = "" if n <= GRID_COLS else f" {s}-{min(s + GRID_COLS, n) - 1}"
    for label, k in names:
      cols[label + tag] = out[k][s:s + GRID_COLS]
  return cols


def _trim_metrics(path: str, first_redone: int) -> None:
  """Drops metrics rows of iterations that a resumed run will redo (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [r for r in f if r.strip() and json.loads(r).get("step", -1) < first_redone]
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(rows)
  os.replace(tmp, path)


def main(argv):
  try:
    train(argv)
  except app.UsageError as e:
    sys.exit(f"train: error: {e}")


def train(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
  _check_flags()
  import jax

  from l4f_jax.method import inference
  from l4f_jax.system import training
  from l4f_jax.method import step as step_lib
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.models.stylegan2 import mean_latent
  from l4f_jax.system import data as data_lib
  from l4f_jax.system import images, metrics_log, sharding, weights
  from l4f_jax.system.checkpoints import Checkpointer

  metrics_log.quiet_library_logs()
  is_main = lambda: jax.process_index() == 0

  # ---------------------------------------------------------------- Devices.
  sharding.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
  if FLAGS.num_devices is not None and (jax.process_count() > 1
                                        or FLAGS.num_devices > jax.device_count()):
    raise app.UsageError(f"--num_devices={FLAGS.num_devices}: this job has {jax.device_count()} "
                         f"devices in {jax.process_count()} process(es); drop the flag or pass "
                         f"at most {jax.device_count()} (one process only)")
  mesh = sharding.make_mesh(FLAGS.num_devices)
  n_dev = mesh.devices.size
  devices = FLAGS.emulate_devices or n_dev
  if devices % n_dev:
    raise app.UsageError(f"--emulate_devices={devices} must be a multiple of the {n_dev} devices "
                         f"in use; pass --num_devices={math.gcd(devices, n_dev)} (one process) "
                         f"or --emulate_devices=0 to run as {n_dev} devices")
  global_batch = FLAGS.batch * devices
  group = training.stddev_group(FLAGS.batch)
  if FLAGS.batch % group:
    raise app.UsageError(f"--batch={FLAGS.batch} is not divisible by the minibatch-stddev group "
                         f"min(batch, 4) = {group}; use --batch <= 4 or a multiple of 4")

  # ---------------------------------------------------------------- Weights (G frozen).
  try:
    config, trees = weights.load_weights(FLAGS.generator)
    g_params = weights.generator_params(trees, FLAGS.generator)
    generator = weights.generator_from_config(config)
  except weights.WeightsError as e:
    raise app.UsageError(f"--generator={FLAGS.generator}: {e}") from None
  size = generator.size
  if size < 16:
    raise app.UsageError(f"--generator={FLAGS.generator} is {size} px; the alpha network needs "
                         ">= 16 px")
  if FLAGS.use_disc and "d" not in trees:
    raise app.UsageError(f"--use_disc: --generator={FLAGS.generator} holds no discriminator 'd'; "
                         f"convert a checkpoint that has one ({CONVERT_CMD}) or drop --use_disc")
  disc = weights.discriminator_from_config(config)
  models = step_lib.Models(generator=generator, alpha=AlphaNetwork(size), discriminator=disc)

  # ---------------------------------------------------------------- Data (this host's share).
  try:
    source, data_size = data_lib.prepare_and_open(FLAGS.dataset, FLAGS.prepare_shapes, size)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  if data_size != size:
    raise app.UsageError(f"--dataset={FLAGS.dataset} holds {data_size} px images but "
                         f"--generator={FLAGS.generator} makes {size} px; prepare the data at "
                         f"{size} px: python -m experiments.prepare_data --src=<image folder> "
                         f"--name=<name> --size={size}")
  if len(source) < global_batch:
    raise app.UsageError(f"--dataset={FLAGS.dataset} has {len(source)} images, fewer than the "
                         f"global batch {global_batch} (--batch={FLAGS.batch} x {devices} devices)")
  shapes_data = _dataset_name(FLAGS.dataset) == "l4f_shapes"
  if FLAGS.eval_samples and not shapes_data:
    raise app.UsageError(f"--eval_samples={FLAGS.eval_samples} needs the built-in l4f_shapes "
                         f"dataset (its colour oracle is the ground truth); --dataset="
                         f"{FLAGS.dataset} is not, so pass --eval_samples=0")
  loader = data_lib.Loader(source, global_batch, seed=FLAGS.seed,
                           process_index=jax.process_index(), process_count=jax.process_count())

  # ---------------------------------------------------------------- Workdir: resume or refuse.
  run = {"generator": os.path.realpath(FLAGS.generator), "size": size, "batch": FLAGS.batch,
         "devices": devices, "global_batch": global_batch}
  run_flags = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.modules[__name__])}
  ckpt = Checkpointer(os.path.join(FLAGS.workdir, "checkpoints"), keep=FLAGS.keep or None)
  latest = ckpt.latest_step()
  if latest is not None:
    diff = training.incompatibilities(ckpt.restore_meta(latest).get("run", {}), run)
    if diff:
      what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
      raise app.UsageError(f"--workdir={FLAGS.workdir} holds a different run ({what}); use a new "
                           f"--workdir or that run's flags ({FLAGS.workdir}/flags.json)")

  # ---------------------------------------------------------------- Models and state.
  cfg = step_lib.L4FConfig(
      lr=FLAGS.lr, r1=FLAGS.r1, d_reg_every=FLAGS.d_reg_every, g_reg_every=FLAGS.g_reg_every,
      r1_quirk_weight=FLAGS.r1_quirk_weight, sat_weight=FLAGS.sat_weight,
      loss_multiplier=FLAGS.loss_multiplier, fg_coverage_value=FLAGS.fg_coverage_value,
      bg_coverage_wt=FLAGS.bg_coverage_wt, bg_coverage_value=FLAGS.bg_coverage_value,
      truncation=FLAGS.trunc, background_mode=FLAGS.background_mode,
      stddev_chunks=devices // n_dev,
      compute_dtype=None if FLAGS.dtype == "float32" else "bfloat16")
  seed = FLAGS.seed
  w_avg = jax.jit(lambda p, k: mean_latent(generator, p, k, N_MEAN_LATENT))(
      g_params, training.stream_key(seed, "w_avg"))
  alpha_params = training.init_alpha(models.alpha, generator,
                                     training.stream_key(seed, "alpha_init"))
  d_params = (trees["d"] if FLAGS.use_disc
              else training.init_discriminator(disc, training.stream_key(seed, "d_init")))
  del trees  # the other stored trees ('g', 'd', noises) are not needed on the device
  # Host copies in, so that every process places its own replicas (no cross-host transfers).
  host = jax.device_get
  state = sharding.replicate(host(step_lib.init_state(cfg, models, alpha_params, d_params)), mesh)
  g_rep, w_rep = sharding.replicate(host(g_params), mesh), sharding.replicate(host(w_avg), mesh)
  start = 0
  if latest is not None:
    start, state, _ = ckpt.restore(state, latest)
    logging.info("resumed from %s at iteration %d", ckpt.directory, start)
  last = FLAGS.iter  # last iteration index
  logs = os.path.join(FLAGS.workdir, "logs")
  if is_main():
    os.makedirs(FLAGS.workdir, exist_ok=True)
    metrics_log.write_json(os.path.join(FLAGS.workdir, "flags.json"), {
        "flags": run_flags, "run": run, "resumed_from": start, "processes": jax.process_count(),
        "mesh_devices": n_dev, "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__})
    _trim_metrics(os.path.join(logs, "metrics.jsonl"), start)
  writer = metrics_log.MetricsWriter(logs)
  metrics_log.log_console(
      f"{size} px, {n_dev} device(s) in {jax.process_count()} process(es)"
      + (f" emulating {devices}" if devices != n_dev else "")
      + f", batch {FLAGS.batch}/device = {global_batch} global, iterations {start}..{last}")

  # ---------------------------------------------------------------- Pictures (process 0, local).
  local = jax.local_devices()[0]
  g_local, w_local = jax.device_put(g_params, local), jax.device_put(w_avg, local)

  def sample(alpha_host, key, n):
    with jax.default_device(local):
      return inference.sample_masks(
          g_local, jax.device_put(alpha_host, local), w_local, key, n, SAMPLE_BATCH,
          generator=generator, alpha_net=models.alpha, truncation=SAMPLE_PSI,
          threshold=THRESHOLD, independent_bg=True, background_mode=FLAGS.background_mode)

  def save_samples(i, state):
    if FLAGS.n_sample and is_main():
      out = sample(sharding.to_host(state.alpha_params), training.stream_key(seed, "grid"),
                   FLAGS.n_sample)
      images.save_grid(os.path.join(FLAGS.workdir, "samples", f"{i:06d}.png"), _grid_columns(out))

  # ---------------------------------------------------------------- Loop.
  steps = {}
  meta = {"flags": run_flags, "run": run}
  progress = metrics_log.Progress(start, last + 1)
  in_flight = collections.deque()  # bounds how far the host runs ahead of the devices
  last_r1, saved = {}, latest
  batches = loader.iterate(start_step=start, num_steps=max(0, last + 1 - start))
  try:
    for i, batch in batches:
      do_r1 = i % cfg.d_reg_every == 0
      if do_r1 not in steps:
        steps[do_r1] = training.make_train_step(models, cfg, mesh, global_batch=global_batch,
                                                seed=seed, do_r1=do_r1)
      real = sharding.shard_host_batch(batch["image"], mesh)
      state, metrics = steps[do_r1](state, g_rep, w_rep, real)
      if do_r1:
        last_r1 = {k: metrics[k] for k in ("r1", "r1_quirk", "r1_loss")}
      in_flight.append(metrics["d_loss"])
      if len(in_flight) > 2:  # wait (no transfer) for iteration i - 2, keeping two queued
        in_flight.popleft().block_until_ready()
      if i % FLAGS.log_every == 0 or i == last:
        m = jax.device_get({**metrics, **last_r1})
        writer.write(i, m)
        metrics_log.log_console(progress.line(i + 1) + "  " + "  ".join(
            f"{k} {float(m[k]):.4f}" for k in ("d_loss", "a_loss", "real_score", "fake_score",
                                                "alpha_mean", "alpha_frac_fg")))
      if i % FLAGS.model_save_freq == 0 or i == last:
        save_samples(i, state)
      if (i + 1) % FLAGS.save_every == 0 or i == last:
        ckpt.save(i + 1, state, dict(meta, step=i + 1), force=True)
        saved = i + 1
  finally:
    batches.close()
  if saved != int(jax.device_get(state.step)):
    ckpt.save(int(jax.device_get(state.step)), state, dict(meta, step=int(state.step)), force=True)
  ckpt.close()
  done = int(jax.device_get(state.step))
  metrics_log.log_console(f"finished {done} iterations ({done - start} in this process, "
                          f"{progress.elapsed():.1f} s)")

  # ---------------------------------------------------------------- Export and evaluation.
  alpha_host = sharding.to_host(state.alpha_params)
  export_cfg = {"size": size, "generator": run["generator"], "kind": "labels4free_alpha",
                "source": f"experiments.train iteration {done}", "iterations": done,
                "alpha_variant": "repro" if FLAGS.reproduce_model else "bg_extractor",
                "train_flags": run_flags}
  dst = os.path.join(FLAGS.workdir, "alpha")
  export_alpha(dst, export_cfg, alpha_host)
  metrics_log.log_console(f"exported A to {dst}")
  if FLAGS.eval_samples and is_main():
    from l4f_jax.datasets.shapes import oracle_mask
    from l4f_jax.method import evaluation
    out = sample(alpha_host, training.stream_key(seed, "eval"), FLAGS.eval_samples)
    gt = oracle_mask(out["image"])
    result = evaluation.mask_metrics(gt, out["hard_mask"])
    result.update(iterations=done, truncation=SAMPLE_PSI, threshold=THRESHOLD,
                  alpha_mean=float(out["alpha"].mean()))
    metrics_log.write_json(os.path.join(FLAGS.workdir, "eval.json"), result)
    k = min(EVAL_GRID, FLAGS.eval_samples)
    images.save_grid(os.path.join(FLAGS.workdir, "eval_errors.png"), {
        "image": out["image"][:k], "mask": out["hard_mask"][:k], "oracle": gt[:k],
        "errors": evaluation.error_overlay(out["image"][:k], out["hard_mask"][:k], gt[:k])})
    writer.write(done, {"eval/fg_iou": result["foreground"]["iou"], "eval/miou": result["miou"],
                        "eval/pred_fg_fraction": result["pred_fg_fraction"]})
    metrics_log.log_console("eval (%d samples vs the l4f_shapes oracle): fg IoU %.4f, mIoU %.4f"
                            % (FLAGS.eval_samples, result["foreground"]["iou"], result["miou"]))
  writer.close()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("l4f_train_end")


if __name__ == "__main__":
  app.run(main)
