"""Generated (image, soft alpha, hard mask) pairs from a generator and a trained alpha network.

  from l4f_jax.config import resolve
  from l4f_jax.programs.pairs import PairsConfig, make_pairs
  summary = make_pairs(resolve(PairsConfig, generator=G, alpha=A, out=DIR, n=4096))

`experiments.make_pairs` is its CLI. Sample i is G(z_i; psi, w_avg) with z_i and its noise drawn
from fold_in(stream_key(seed, 'pairs'), i), exactly as `inference.sample_batch` draws them, so the
dataset is a pure function of (generator, alpha, seed, psi, n) whatever the device and host count.
The hard mask follows the official inference rule alpha > threshold (0.9).

Generation is the costly part (at 1024 px): every global batch of `batch` x devices samples is one
jitted program sharded over all devices of all hosts; each host writes the rows of its devices as
NumPy chunks into a temporary directory next to `out`; process 0 then writes the tfds array_record
dataset (`l4f_jax.datasets.pairs`) and renames the temporary directory to `out`. An interrupted run
leaves no dataset at `out`: Ctrl-C removes its staging folder, and the folder a killed run left is
removed by the next run, which says so (`files.staging_dir`). `--out` may not be, hold or lie inside
--generator or --alpha; an existing `out` is replaced only with `overwrite` and only when it is an
earlier make_pairs output.

`max_undecided` < 1 drops samples whose fraction of undecided pixels (0.1 < alpha < 0.9) exceeds
it: low-confidence labels. The summary (kept / dropped counts) goes to `<out>/pairs.json`.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.config import option, to_dict
from l4f_jax.method import inference, masks
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.datasets.build import build
from l4f_jax.io import files
from l4f_jax.system import metrics_log, sharding, training, weights
from l4f_jax.errors import UserError

SUMMARY = "pairs.json"


@dataclasses.dataclass(frozen=True)
class PairsConfig:
  generator: str = option("experiments/assets/shapes64", "Converted generator weight directory.",
                          nonempty=True)
  alpha: str = option("workspace/runs/shapes/alpha", "Trained alpha network (a run's alpha/).",
                      nonempty=True)
  out: str = option("workspace/datasets/shapes_pairs", "Output dataset directory (must not "
                    "exist unless --overwrite).", nonempty=True)
  overwrite: bool = option(False, "Replace an existing dataset at --out.")
  n: int = option(4096, "Number of samples generated (before --max_undecided drops any).", ge=1)
  truncation: float = option(0.7, "Truncation psi of the generated images.", gt=0, le=1)
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold (official inference "
                            "rule).", ge=0, le=1)
  max_undecided: float = option(1.0, "Drop samples with a larger fraction of undecided pixels "
                                "(0.1 < alpha < 0.9); 1 keeps all.", ge=0, le=1)
  batch: int = option(16, "Samples per device per generation step.", ge=1)
  seed: int = option(0, "Seed of the latents and noise (and of w_avg).")
  noise_mode: str = option("random", training.NOISE_MODE_HELP, choices=training.NOISE_MODES)
  num_devices: int = option(0, "Use only the first N devices (0 = all).", ge=0)


def make_pairs(cfg: PairsConfig) -> dict:
  """Generates the dataset (module docstring); returns the summary written to pairs.json."""
  out = files.check_output_dir(cfg.out, cfg.overwrite, program="make_pairs", summary=SUMMARY,
                               owned=("data",), inputs=[("--generator", cfg.generator),
                                                        ("--alpha", cfg.alpha)])
  gen = weights.load_generator(cfg.generator)
  alpha_params = weights.load_alpha(cfg.alpha, gen)
  mesh = sharding.make_mesh(cfg.num_devices or None)
  global_batch = cfg.batch * mesh.devices.size
  rows = slice(jax.process_index() * global_batch // jax.process_count(),
               (jax.process_index() + 1) * global_batch // jax.process_count())
  tmp = _shared_tmpdir(out)
  try:
    _generate(cfg, gen, alpha_params, mesh, global_batch, rows, os.path.join(tmp, "parts"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("l4f_pairs_generated")
    summary = (_build(cfg, gen, tmp, out, weights.fingerprint(alpha_params))
               if jax.process_index() == 0 else None)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("l4f_pairs_done")
    return summary
  finally:
    if jax.process_index() == 0 and os.path.exists(tmp):
      files.remove_staging(tmp)


def _shared_tmpdir(out: str) -> str:
  """A staging folder next to `out`, the same on every process (process 0 makes it; a folder that
  a killed earlier run left is removed, `files.staging_dir`)."""
  path = files.staging_dir(out, program="make_pairs") if jax.process_index() == 0 else ""
  return sharding.broadcast_text(path)


def _generate(cfg, gen, alpha_params, mesh, global_batch, rows, parts) -> None:
  """Writes this host's rows of every global batch to `parts` as NumPy chunks."""
  os.makedirs(parts, exist_ok=True)
  w_avg = training.generator_w_avg(gen, cfg.seed)
  g_rep = sharding.replicate(gen.params, mesh)
  a_rep = sharding.replicate(alpha_params, mesh)
  w_rep = sharding.replicate(w_avg, mesh)
  base = training.stream_key(cfg.seed, "pairs")
  kw = dict(generator=gen.module, alpha_net=AlphaNetwork(gen.size), truncation=cfg.truncation,
            threshold=cfg.threshold, background=False,
            const_noise=training.generator_noise(gen, cfg.noise_mode))

  @jax.jit
  def generate(g_params, a_params, w, index):
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    o = inference.sample_batch(g_params, a_params, w, keys, **kw)
    alpha = o["alpha"].astype(jnp.float32)
    undecided = jnp.mean(masks.undecided(alpha), axis=(1, 2, 3))
    return {"image": _to_uint8_image(o["image"]),
            "alpha": jnp.floor(jnp.clip(alpha, 0, 1) * 255 + 0.5).astype(jnp.uint8),
            "mask": (o["hard_mask"][..., None] * 255).astype(jnp.uint8),
            "undecided": undecided, "id": index}

  progress = metrics_log.Progress(0, cfg.n)
  for start in range(0, cfg.n, global_batch):
    index = np.arange(start, start + global_batch, dtype=np.int32)[rows]
    o = generate(g_rep, a_rep, w_rep, sharding.shard_host_batch(index, mesh))
    local = {k: np.concatenate([np.asarray(s.data) for s in
                                sorted(v.addressable_shards, key=lambda s: s.index[0].start or 0)])
             for k, v in o.items()}
    keep = (local["id"] < cfg.n) & (local["undecided"] <= cfg.max_undecided)
    if keep.any():
      np.savez(os.path.join(parts, f"part-{int(local['id'][0]):09d}.npz"),
               **{k: v[keep] for k, v in local.items()})
    done = min(start + global_batch, cfg.n)
    if start == 0 or done == cfg.n or (start // global_batch) % 20 == 0:
      metrics_log.log_console(f"pairs: {progress.line(done)}")


def _to_uint8_image(x):
  """[-1, 1] float -> uint8, as images.to_uint8 (clip, floor(v * 255 + 0.5))."""
  return jnp.floor((jnp.clip(x.astype(jnp.float32), -1, 1) + 1) * 0.5 * 255 + 0.5).astype(jnp.uint8)


def _build(cfg, gen, tmp, out, alpha_fingerprint: str) -> dict:
  from l4f_jax.datasets.pairs import L4fPairs, PairsConfig as BuilderConfig
  parts = os.path.join(tmp, "parts")
  n_parts = len(glob.glob(os.path.join(parts, "part-*.npz")))
  if n_parts == 0:
    raise UserError(f"--max_undecided={cfg.max_undecided} dropped all {cfg.n} samples; raise it "
                    "(1 keeps all)")
  builder = L4fPairs(config=BuilderConfig(name=f"{gen.size}px", size=gen.size),
                     data_dir=os.path.join(tmp, "data"), file_format="array_record")
  build(builder, manual_dir=parts, tmp_parent=tmp)
  kept = builder.info.splits["train"].num_examples
  shutil.rmtree(parts)
  summary = {"n": cfg.n, "kept": int(kept), "dropped": int(cfg.n - kept), "size": gen.size,
             "config": to_dict(cfg), "generator_fingerprint": gen.fingerprint,
             "alpha_fingerprint": alpha_fingerprint,
             "path": os.path.relpath(os.fspath(builder.data_dir), tmp)}
  metrics_log.write_json(os.path.join(tmp, SUMMARY), summary)
  files.replace_dir(tmp, out)
  metrics_log.log_console(f"pairs: {kept} of {cfg.n} samples kept ({cfg.n - kept} dropped by "
                          f"--max_undecided={cfg.max_undecided}) in {out}")
  return dict(summary, path=os.path.join(out, summary["path"]))
