"""Labels4Free training as a library program: `train_and_evaluate(config)`.

  from l4f_jax.config import resolve
  from l4f_jax.programs.train_labels4free import TrainConfig, train_and_evaluate
  result = train_and_evaluate(resolve(TrainConfig, workdir="/tmp/run", iter=20, batch=2))

`experiments.train` is its CLI (flags derived from TrainConfig). The program mirrors the official
train.py (RameenAbdal/Labels4Free train.py: the loop and its argparse defaults): iterations i = 0 .. iter (iter + 1 in all); `batch` is PER DEVICE
and the global batch is batch x devices; each device runs D's minibatch stddev (groups of
min(batch, 4)) and the R1 quirk term on its own rows; `emulate_devices=E` lets fewer devices
reproduce an E-device run exactly.

Outputs in `workdir` (re-running the same config resumes from the latest checkpoint):
  flags.json               the resolved config and the run identity
  checkpoints/<n>/         Orbax: alpha params + EMA, D params, both Adam states, step n
  logs/metrics.jsonl       losses and alpha monitors every log_every iterations (+ TensorBoard)
  samples/<i>.png          image / alpha / mask / composite / background grid after iteration i
  alpha/                   the final A in the converted-weight format (for sample / evaluate)
  eval.json, eval_errors.png   with eval_samples on the built-in l4f_shapes data
PRNG: see l4f_jax/system/training.py (everything derives from `seed` and the iteration index).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import jax
from absl import logging

from l4f_jax.config import option, to_dict
from l4f_jax.method import inference, masks
from l4f_jax.method import step as step_lib
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.system import data as data_lib
from l4f_jax.io import files, images
from l4f_jax.system import loop, metrics_log, sharding, training, weights
from l4f_jax.errors import UserError

CONVERT_CMD = "python -m experiments.convert --src=<stylegan2 .pt> --dst=<dir>"
SAMPLE_PSI, THRESHOLD = 0.5, masks.HARD_MASK_THRESHOLD  # official sampling (test_sample.py)
SAMPLE_BATCH, GRID_COLS, EVAL_GRID = 8, 8, 16
RESUME_KEYS = ("generator_fingerprint", "size", "batch", "devices")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every option of a Labels4Free run (official train.py names and defaults)."""
  generator: str = option("experiments/assets/shapes64",
                          f"Converted generator weight directory ({CONVERT_CMD}).", nonempty=True)
  dataset: str = option("workspace/datasets/l4f_shapes", "Prepared dataset directory "
                        f"({data_lib.PREPARE_HINT}).", nonempty=True)
  prepare_shapes: int = option(0, "If > 0 and --dataset (…/l4f_shapes) is missing, build the "
                               "built-in dataset with this many images at the generator's size.",
                               ge=0)
  workdir: str = option("workspace/runs/l4f", "Checkpoints, logs, sample grids, export.",
                        nonempty=True)
  overwrite: bool = option(False, "Delete an existing run in --workdir and start afresh.")
  iter: int = option(1001, "Last iteration index; the loop runs iter + 1 iterations.", ge=0)
  batch: int = option(16, "Batch PER DEVICE (global batch = batch x devices).", ge=1)
  method: step_lib.L4FConfig = step_lib.L4FConfig()
  use_disc: bool = option(False, "Start D from the weights' 'd' (official: LSUN-Car).")
  reproduce_model: bool = option(False, "Official --reproduce_model: recorded in the run and "
                                 "export only (A always uses the repro names).")
  n_sample: int = option(64, "Samples per grid (0 = no grids).", ge=0)
  model_save_freq: int = option(100, "Grid interval (official: samples + checkpoint).", ge=1)
  save_every: int = option(100, "Checkpoint interval in iterations.", ge=1)
  keep: int = option(2, "Checkpoints to keep (0 = all).", ge=0)
  log_every: int = option(10, "Metrics interval (the only host syncs of the loop).", ge=1)
  eval_samples: int = option(0, "At the end, score this many hard masks against the l4f_shapes "
                             "colour oracle (built-in dataset only).", ge=0)
  seed: int = option(0, "Seed of A/D init, w_avg, latents, noise and data order.")
  num_devices: Optional[int] = option(None, "Use only the first N devices (one process only).",
                                      ge=1)
  emulate_devices: int = option(0, "Behave as this many devices (a multiple of those in use): "
                                "global batch and stddev groups of an E-device run (0 = off).",
                                ge=0)
  collapse: str = option("warn", "Collapse watch (official issue 7: A marks every pixel foreground, "
                         "or none): warn, stop the run (the collapsed state is never "
                         "checkpointed), or off.", choices=("warn", "stop", "off"))
  collapse_alpha: float = option(0.95, "Collapse when the batch's alpha_mean or alpha_frac_fg "
                                 "reaches this (or alpha_mean falls to 1 - this).", gt=0.5, le=1)
  dtype: str = option("float32", "Compute dtype of G and D (A, losses and optimizers stay "
                      "float32).", choices=("float32", "bfloat16"))
  profile_steps: str = option("", "Trace iterations a:b (a included, b not) with jax.profiler "
                              "into <workdir>/profile; '' = off.")


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


def collapse_reason(metrics: dict, limit: float):
  """Why the logged monitors say A collapsed (None if they do not): alpha_mean or alpha_frac_fg
  >= limit (every pixel foreground: x_c becomes a real sample, the binarization loss is zero) or
  alpha_mean <= 1 - limit (every pixel background)."""
  mean, frac = float(metrics.get("alpha_mean", 0.5)), float(metrics.get("alpha_frac_fg", 0.0))
  if mean >= limit or frac >= limit:
    return (f"A collapsed to all foreground (alpha_mean {mean:.3f}, alpha_frac_fg {frac:.3f} >= "
            f"--collapse_alpha={limit})")
  if mean <= 1 - limit:
    return f"A collapsed to all background (alpha_mean {mean:.3f} <= {1 - limit:.3f})"
  return None


def collapse_guard(mode: str, limit: float):
  """The loop guard of --collapse: 'stop' returns the reason, 'warn' logs it once, 'off' is None."""
  if mode == "off":
    return None
  warned = []

  def guard(metrics):
    reason = collapse_reason(metrics, limit)
    if reason and mode == "stop":
      return reason
    if reason and not warned:
      warned.append(reason)
      logging.warning("%s; --collapse=stop stops such a run, w_bg > 0 (--bg_coverage_wt) guards "
                      "against it", reason)
    return None
  return guard


def _devices(cfg: TrainConfig):
  """(mesh, devices in use, emulated devices, global batch) with the batch checks."""
  if cfg.num_devices is not None and (jax.process_count() > 1
                                      or cfg.num_devices > jax.device_count()):
    raise UserError(f"--num_devices={cfg.num_devices}: this job has {jax.device_count()} devices "
                    f"in {jax.process_count()} process(es); drop the flag or pass at most "
                    f"{jax.device_count()} (one process only)")
  mesh = sharding.make_mesh(cfg.num_devices)
  n_dev = mesh.devices.size
  devices = cfg.emulate_devices or n_dev
  if devices % n_dev:
    raise UserError(f"--emulate_devices={devices} must be a multiple of the {n_dev} devices in "
                    f"use; pass --num_devices={math.gcd(devices, n_dev)} (one process) or "
                    f"--emulate_devices=0 to run as {n_dev} devices")
  group = training.stddev_group(cfg.batch)
  if cfg.batch % group:
    raise UserError(f"--batch={cfg.batch} is not divisible by the minibatch-stddev group "
                    f"min(batch, 4) = {group}; use --batch <= 4 or a multiple of 4")
  return mesh, n_dev, devices, cfg.batch * devices


def _open_data(cfg: TrainConfig, size: int, global_batch: int, devices: int):
  try:
    source, data_size = data_lib.prepare_and_open(cfg.dataset, cfg.prepare_shapes, size)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None
  if data_size != size:
    raise UserError(f"--dataset={cfg.dataset} holds {data_size} px images but --generator="
                    f"{cfg.generator} makes {size} px; prepare the data at {size} px: "
                    f"python -m experiments.prepare_data --src=<image folder> --name=<name> "
                    f"--size={size}")
  if len(source) < global_batch:
    raise UserError(f"--dataset={cfg.dataset} has {len(source)} images, fewer than the global "
                    f"batch {global_batch} (--batch={cfg.batch} x {devices} devices)")
  if cfg.eval_samples and data_lib.dataset_name(cfg.dataset) != "l4f_shapes":
    raise UserError(f"--eval_samples={cfg.eval_samples} needs the built-in l4f_shapes dataset "
                    f"(its colour oracle is the ground truth); --dataset={cfg.dataset} is not, so "
                    "pass --eval_samples=0")
  return data_lib.Loader(source, global_batch, seed=cfg.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())


def train_and_evaluate(cfg: TrainConfig) -> dict:
  """Trains A and D, exports A, evaluates; returns {'iterations', 'alpha', 'eval' (or None)}."""
  # ---------------------------------------------------------------- Devices, weights, data.
  loop.parse_profile_steps(cfg.profile_steps)  # checked before any work; used by _train
  mesh, n_dev, devices, global_batch = _devices(cfg)
  gen = weights.load_generator(cfg.generator)
  size = gen.size
  if size < 16:
    raise UserError(f"--generator={cfg.generator} is {size} px; the alpha network needs >= 16 px")
  if cfg.use_disc and "d" not in gen.trees:
    raise UserError(f"--use_disc: --generator={cfg.generator} holds no discriminator 'd'; convert "
                    f"a checkpoint that has one ({CONVERT_CMD}) or drop --use_disc")
  files.check_writable_dir(cfg.workdir, "--workdir")
  loader = _open_data(cfg, size, global_batch, devices)
  models = step_lib.Models(generator=gen.module, alpha=AlphaNetwork(size),
                           discriminator=gen.discriminator())
  group = training.stddev_group(cfg.batch, models.discriminator.stddev_group)
  if cfg.batch % group:  # a stored (NVIDIA) group size other than 4
    raise UserError(f"--batch={cfg.batch} is not divisible by D's minibatch-stddev group "
                    f"min(batch, {models.discriminator.stddev_group}) = {group} stored in "
                    f"--generator={cfg.generator}; pass a multiple of {group}")
  method = dataclasses.replace(cfg.method, stddev_chunks=devices // n_dev,
                               compute_dtype=None if cfg.dtype == "float32" else cfg.dtype)

  # ---------------------------------------------------------------- Run directory.
  identity = {"generator": os.path.realpath(cfg.generator), "size": size, "batch": cfg.batch,
              "devices": devices, "global_batch": global_batch,
              "generator_fingerprint": gen.fingerprint}
  run = loop.open_run(cfg.workdir, program="labels4free", config=to_dict(cfg), identity=identity,
                      keep=cfg.keep, overwrite=cfg.overwrite, resume_keys=RESUME_KEYS,
                      inputs=[("--generator", cfg.generator), ("--dataset", cfg.dataset)])
  try:
    return _train(cfg, run, gen, models, method, mesh, loader, n_dev, devices, global_batch)
  finally:
    run.close()


def _train(cfg, run, gen, models, method, mesh, loader, n_dev, devices, global_batch) -> dict:
  seed = cfg.seed
  w_avg = training.generator_w_avg(gen, seed)
  alpha_params = training.init_alpha(models.alpha, gen.module,
                                     training.stream_key(seed, "alpha_init"))
  d_params = (gen.trees["d"] if cfg.use_disc else
              training.init_discriminator(models.discriminator, training.stream_key(seed, "d_init")))
  # Host copies in, so that every process places its own replicas (no cross-host transfers).
  state = sharding.replicate(step_lib.init_state(method, models, alpha_params, d_params), mesh)
  g_rep, w_rep = sharding.replicate(gen.params, mesh), sharding.replicate(w_avg, mesh)
  state, start = run.restore_or(state)
  last = cfg.iter
  metrics_log.log_console(
      f"{gen.size} px, {n_dev} device(s) in {jax.process_count()} process(es)"
      + (f" emulating {devices}" if devices != n_dev else "")
      + f", batch {cfg.batch}/device = {global_batch} global, iterations {start}..{last}")

  # ---------------------------------------------------------------- Pictures (process 0, local).
  local = jax.local_devices()[0]
  g_local, w_local = jax.device_put(gen.params, local), jax.device_put(w_avg, local)

  def sample(alpha_host, key, n):
    with jax.default_device(local):
      return inference.sample_masks(
          g_local, jax.device_put(alpha_host, local), w_local, key, n, SAMPLE_BATCH,
          generator=gen.module, alpha_net=models.alpha, truncation=SAMPLE_PSI,
          threshold=THRESHOLD, independent_bg=True, background_mode=method.background_mode)

  def on_sample(i, state):
    if cfg.n_sample and jax.process_index() == 0:
      out = sample(sharding.to_host(state.alpha_params), training.stream_key(seed, "grid"),
                   cfg.n_sample)
      images.save_grid(run.path("samples", f"{i:06d}.png"), _grid_columns(out))

  # ---------------------------------------------------------------- Loop.
  steps = {}

  def step_fn(i, state, batch):
    do_r1 = i % method.d_reg_every == 0
    if do_r1 not in steps:
      steps[do_r1] = training.make_train_step(models, method, mesh, global_batch=global_batch,
                                              seed=seed, do_r1=do_r1)
    return steps[do_r1](state, g_rep, w_rep, sharding.shard_host_batch(batch["image"], mesh))

  batches = loader.iterate(start_step=start, num_steps=max(0, last + 1 - start))
  state = loop.train_loop(state, batches, step_fn, run=run, start=start, end=last + 1,
                          log_every=cfg.log_every, save_every=cfg.save_every,
                          sample_every=cfg.model_save_freq, on_sample=on_sample,
                          console_keys=("d_loss", "a_loss", "real_score", "fake_score",
                                        "alpha_mean", "alpha_frac_fg"),
                          sticky_keys=("r1", "r1_quirk", "r1_loss"),
                          guard=collapse_guard(cfg.collapse, cfg.collapse_alpha),
                          profile_steps=loop.parse_profile_steps(cfg.profile_steps))
  # ---------------------------------------------------------------- Export and evaluation.
  done = int(jax.device_get(state.step))
  export_cfg = {"kind": "labels4free_alpha", "generator": os.path.realpath(cfg.generator),
                "source": f"experiments.train iteration {done}", "iterations": done,
                "alpha_variant": "repro" if cfg.reproduce_model else "bg_extractor",
                "train_config": to_dict(cfg), **gen.alpha_identity()}
  dst = run.path("alpha")
  loop.finish_and_export(run, state, dst, export_cfg,
                         lambda s: {"alpha": sharding.to_host(s.alpha_params)})
  metrics_log.log_console(f"finished {done} iterations ({done - start} in this process); "
                          f"exported A to {dst}")
  alpha_host = sharding.to_host(state.alpha_params)
  result = None
  if cfg.eval_samples and jax.process_index() == 0:
    result = _evaluate(cfg, run, sample, alpha_host, done)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("l4f_train_end")
  return {"iterations": done, "alpha": dst, "eval": result}


def _evaluate(cfg, run, sample, alpha_host, done) -> dict:
  """Hard masks of `eval_samples` generated images vs the l4f_shapes colour oracle."""
  from l4f_jax.datasets.shapes import oracle_mask
  from l4f_jax.method import evaluation
  out = sample(alpha_host, training.stream_key(cfg.seed, "eval"), cfg.eval_samples)
  gt = oracle_mask(out["image"])
  result = evaluation.mask_metrics(gt, out["hard_mask"])
  result.update(iterations=done, truncation=SAMPLE_PSI, threshold=THRESHOLD,
                alpha_mean=float(out["alpha"].mean()))
  metrics_log.write_json(run.path("eval.json"), result)
  k = min(EVAL_GRID, cfg.eval_samples)
  images.save_grid(run.path("eval_errors.png"), {
      "image": out["image"][:k], "mask": out["hard_mask"][:k], "oracle": gt[:k],
      "errors": evaluation.error_overlay(out["image"][:k], out["hard_mask"][:k], gt[:k])})
  run.writer.write(done, {"eval/fg_iou": result["foreground"]["iou"], "eval/miou": result["miou"],
                          "eval/pred_fg_fraction": result["pred_fg_fraction"]})
  metrics_log.log_console("eval (%d samples vs the l4f_shapes oracle): fg IoU %.4f, mIoU %.4f"
                          % (cfg.eval_samples, result["foreground"]["iou"], result["miou"]))
  return result
