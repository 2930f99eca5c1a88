"""The student segmenter's training program: `train_and_evaluate(config)`.

A U-Net (`l4f_jax.models.unet.UNet`) learns Labels4Free's soft masks from generated pairs
(`experiments.make_pairs`), so that it segments real photos. It runs on the same system as
experiments.train: a jit(shard_map) step over every device of every host with donated state
(`method.student.student_step`, explicit pmean), Orbax checkpoints with exact resume, metrics.jsonl +
TensorBoard, grids (image / soft target / prediction / hard mask), progress with ETA, one-line
errors. Host-side augmentations (`system.augment`, each behind a flag) bridge the generated -> real
gap; they are a pure function of (seed, step, row), so a resumed run sees the same batches.

Outputs in `workdir`: flags.json, checkpoints/, logs/, samples/<i>.png, and the trained network in
the weight-directory format at `export` (default <workdir>/segmenter): config.json says its input
size, architecture and threshold; `experiments.segment --segmenter=<export>` reads it.
"""
from __future__ import annotations

import dataclasses
import json
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.config import nested, option, to_dict
from l4f_jax.method import masks, student as student_lib
from l4f_jax.models.unet import SegmenterArch
from l4f_jax.io import files, images
from l4f_jax.system import augment, data as data_lib, loop, sharding, training
from l4f_jax.system import weights
from l4f_jax.errors import UserError

@dataclasses.dataclass(frozen=True)
class StudentConfig:
  pairs: str = option("workspace/datasets/shapes_pairs", "Pairs dataset directory "
                      "(python -m experiments.make_pairs).", nonempty=True)
  workdir: str = option("workspace/runs/student", "Checkpoints, logs and sample grids.",
                        nonempty=True)
  export: Optional[str] = option(None, "Where the trained segmenter is written (default "
                                 "<workdir>/segmenter).")
  overwrite: bool = option(False, "Delete an existing run in --workdir and start afresh.")
  steps: int = option(1500, "Training steps.", ge=1)
  batch: int = option(16, "Batch PER DEVICE (global batch = batch x devices).", ge=1)
  arch: SegmenterArch = nested(SegmenterArch)
  hp: student_lib.StudentHParams = nested(student_lib.StudentHParams)
  augment: augment.AugmentConfig = nested(augment.AugmentConfig, prefix="aug_")
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = student alpha > threshold (stored "
                            "in the export; 0.9 = the official inference rule of A).",
                            ge=0, le=1)
  n_sample: int = option(16, "Pairs shown in each grid (0 = no grids).", ge=0)
  sample_every: int = option(500, "Grid interval.", ge=1)
  save_every: int = option(500, "Checkpoint interval.", ge=1)
  keep: int = option(2, "Checkpoints to keep (0 = all).", ge=0)
  log_every: int = option(50, "Metrics interval.", ge=1)
  seed: int = option(0, "Seed of the init, the data order and the augmentations.")
  num_devices: Optional[int] = option(None, "Use only the first N devices.", ge=1)


def _pairs_provenance(pairs: str) -> dict:
  """The generator's and A's fingerprints that make_pairs recorded in <pairs>/pairs.json."""
  try:
    with open(os.path.join(pairs, "pairs.json")) as f:
      meta = json.load(f)
    return {k: meta[k] for k in ("generator_fingerprint", "alpha_fingerprint") if k in meta}
  except (OSError, ValueError, TypeError):
    return {}


def _export_dir(cfg: StudentConfig) -> str:
  return cfg.export or os.path.join(cfg.workdir, "segmenter")


def train_and_evaluate(cfg: StudentConfig) -> dict:
  """Trains and exports the student; returns {'steps', 'export', 'metrics' (last logged)}."""
  files.check_writable_dir(cfg.workdir, "--workdir")
  export = _export_dir(cfg)
  files.check_disjoint(export, [("--pairs", cfg.pairs)], "--export")
  if cfg.export and os.path.lexists(export) and not (cfg.overwrite or weights.is_segmenter(export)):
    raise UserError(f"--export={cfg.export} exists and is not a segmenter export; choose a new "
                    "directory")
  mesh = sharding.make_mesh(cfg.num_devices)
  global_batch = cfg.batch * mesh.devices.size
  if not os.path.isdir(cfg.pairs):
    raise UserError(f"--pairs={cfg.pairs}: no such directory; make the pairs with python -m "
                    f"experiments.make_pairs --out={cfg.pairs}")
  try:
    source, size = data_lib.open_dataset(cfg.pairs)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e).replace("--dataset=", "--pairs=").replace(
        data_lib.PREPARE_HINT, "python -m experiments.make_pairs")) from None
  if "alpha" not in source[0]:
    raise UserError(f"--pairs={cfg.pairs} holds no 'alpha' masks; make it with python -m "
                    "experiments.make_pairs")
  if size % 2 ** cfg.arch.depth:
    raise UserError(f"--depth={cfg.arch.depth}: the {size} px pairs are not divisible by "
                    f"2**depth; lower --depth")
  if len(source) < global_batch:
    raise UserError(f"--pairs={cfg.pairs} has {len(source)} pairs, fewer than the global batch "
                    f"{global_batch}")
  loader = data_lib.Loader(source, global_batch, seed=cfg.seed, flip=False,
                           process_index=jax.process_index(), process_count=jax.process_count())
  run = loop.open_run(cfg.workdir, program="train_student", config=to_dict(cfg),
                      identity={"size": size, "arch": to_dict(cfg.arch), "batch": cfg.batch,
                                "devices": int(mesh.devices.size)},
                      keep=cfg.keep, overwrite=cfg.overwrite,
                      resume_keys=("size", "arch", "batch", "devices"),
                      inputs=[("--pairs", cfg.pairs)])
  try:
    return _train(cfg, run, mesh, loader, size, global_batch, export)
  finally:
    run.close()


def _train(cfg, run, mesh, loader, size, global_batch, export) -> dict:
  model = cfg.arch.module()
  x0 = jnp.zeros((1, size, size, 3))
  params = jax.jit(model.init)(training.stream_key(cfg.seed, "student_init"), x0)["params"]
  state = sharding.replicate(student_lib.init_student_state(cfg.hp, params), mesh)
  state, start = run.restore_or(state)

  rep, shd = sharding.REPLICATED, sharding.SHARDED
  per_device = functools.partial(student_lib.student_step, model=model, hp=cfg.hp,
                                 axis_name=sharding.AXIS)
  step = jax.jit(sharding.data_parallel(per_device, mesh, in_specs=(rep, shd, shd),
                                        out_specs=(rep, rep)), donate_argnums=0)

  def step_fn(i, state, batch):
    del i
    put = lambda x: sharding.shard_host_batch(x, mesh)
    return step(state, put(batch["image"]), put(batch["alpha"]))

  first_row = loader.rows.start

  def batches():
    for i, batch in loader.iterate(start_step=start, num_steps=max(0, cfg.steps - start)):
      yield i, augment.augment_batch(batch, cfg.augment, seed=cfg.seed, step=i,
                                     first_row=first_row)

  # Fixed pairs for the grids (the first n_sample records, not augmented).
  n = min(cfg.n_sample, len(loader.source))
  fixed = [loader.source[i] for i in range(n)]
  fixed_images = data_lib.scale_images(np.stack([r["image"] for r in fixed])) if n else None
  fixed_alpha = np.stack([r["alpha"] for r in fixed]).astype(np.float32) / 255 if n else None
  predict = jax.jit(functools.partial(student_lib.predict_alpha, model=model))

  def on_sample(i, state):
    if not n or jax.process_index() != 0:
      return
    p = np.asarray(predict(sharding.to_host(state.params), fixed_images))
    images.save_grid(run.path("samples", f"{i:06d}.png"), {
        "image": fixed_images, "alpha (teacher)": fixed_alpha, "student": p,
        "student mask": masks.hard_mask(p[..., 0], cfg.threshold)})

  it = batches()
  state = loop.train_loop(state, it, step_fn, run=run, start=start, end=cfg.steps,
                          log_every=cfg.log_every, save_every=cfg.save_every,
                          sample_every=cfg.sample_every if n else 0, on_sample=on_sample,
                          console_keys=("loss", "bce", "iou", "pixel_acc"))
  done = int(jax.device_get(state.step))
  config = {"kind": weights.SEGMENTER_KIND, "size": size, "arch": to_dict(cfg.arch),
            "threshold": cfg.threshold, "steps": done, "pairs": os.path.abspath(cfg.pairs),
            "train_config": to_dict(cfg), **_pairs_provenance(cfg.pairs)}
  loop.finish_and_export(run, state, export, config,
                         lambda s: {"segmenter": sharding.to_host(s.params)})
  return {"steps": done, "export": export}
