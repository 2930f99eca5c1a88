r"""Scores Labels4Free masks: foreground/background IoU, mean IoU, F1, precision, recall, accuracy.

Two sources of masks:

  # A generator + a trained alpha network, on N seeded samples, against the built-in oracle
  # (the colour rule of l4f_shapes, which recognises the foreground in any image):
  python -m experiments.evaluate --generator=experiments/assets/shapes64 \
      --alpha=workspace/runs/shapes/alpha --n=512 --out=workspace/eval/shapes

  # Folders of PNG masks with the official test_customdata.py conventions (natural sort pairing,
  # foreground = grey value 255, confusion pooled over all pixels). Either one pair of folders, or a
  # root whose class folders each hold a `*_gt` and a `*_pred` folder (the released custom_dataset):
  python -m experiments.evaluate --gt_dir=Mask_cat_gt --pred_dir=Mask_cat_pred
  python -m experiments.evaluate --masks=../shared/data/l4f_custom_masks

Prints a table, writes metrics.json (and, for generated samples, a grid marking false positives red
and false negatives blue) under --out.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("generator", None, "Converted generator weight directory.")
flags.DEFINE_string("alpha", None, "Alpha network weight directory (a training run's alpha/ export).")
flags.DEFINE_integer("n", 512, "Number of generated samples to score.")
flags.DEFINE_integer("batch", 16, "Sampling batch.")
flags.DEFINE_integer("seed", 0, "Sample i is drawn from fold_in(key(seed), i).")
flags.DEFINE_float("truncation", 0.5, "Foreground psi (official test_sample: 0.5).")
flags.DEFINE_float("threshold", 0.9, "Hard mask = alpha > threshold (official --th).")
flags.DEFINE_enum("oracle", "shapes", ["shapes"], "Ground truth for generated samples.")
flags.DEFINE_string("gt_dir", None, "Folder of ground-truth PNG masks.")
flags.DEFINE_string("pred_dir", None, "Folder of predicted PNG masks (paired by natural sort).")
flags.DEFINE_string("masks", None, "Root with one folder per class, each holding *_gt and *_pred.")
flags.DEFINE_string("out", None, "Write metrics.json (and grids) here.")
flags.DEFINE_integer("grid_samples", 16, "Samples shown in the error grid.")


class EvalError(Exception):
  """One-line user-facing error."""


def _class_pairs(root: str) -> dict[str, tuple[str, str]]:
  if not os.path.isdir(root):
    raise EvalError(f"--masks={root}: no such directory")
  pairs = {}
  for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if not os.path.isdir(d):
      continue
    subs = sorted(os.listdir(d))
    gt = [s for s in subs if s.lower().endswith("_gt")]
    pred = [s for s in subs if s.lower().endswith("_pred")]
    if len(gt) == 1 and len(pred) == 1:
      pairs[name] = (os.path.join(d, gt[0]), os.path.join(d, pred[0]))
  if not pairs:
    raise EvalError(f"--masks={root}: no class folder holds one '*_gt' and one '*_pred' folder")
  return pairs


def evaluate_folders() -> dict:
  from l4f_jax.method import evaluation
  if FLAGS.masks:
    results = {name: evaluation.evaluate_mask_folders(gt, pred)
               for name, (gt, pred) in _class_pairs(FLAGS.masks).items()}
    print(evaluation.format_table(results))
    return results
  for flag in ("gt_dir", "pred_dir"):
    if not os.path.isdir(FLAGS[flag].value):
      raise EvalError(f"--{flag}={FLAGS[flag].value}: not a directory of PNG masks")
  result = evaluation.evaluate_mask_folders(FLAGS.gt_dir, FLAGS.pred_dir)
  print(evaluation.format_table(result))
  return result


def evaluate_generated() -> dict:
  import jax
  import numpy as np

  from l4f_jax.datasets.shapes import oracle_mask
  from l4f_jax.method import evaluation, inference
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.models.stylegan2 import mean_latent
  from l4f_jax.system import images, weights

  if not FLAGS.alpha:
    raise EvalError("--generator needs --alpha=<alpha weight directory> (a training run's alpha/ "
                    "export, or experiments.convert of an official checkpoint)")
  try:
    g_config, g_trees = weights.load_weights(FLAGS.generator)
    a_config, a_trees = weights.load_weights(FLAGS.alpha)
  except weights.WeightsError as e:
    raise EvalError(str(e)) from None
  if "alpha" not in a_trees:
    raise EvalError(f"--alpha={FLAGS.alpha} holds no alpha network (it has {sorted(a_trees)})")
  G = weights.generator_from_config(g_config)
  if a_config.get("size", G.size) != G.size:
    raise EvalError(f"--alpha={FLAGS.alpha} is for {a_config.get('size')} px but --generator is "
                    f"{G.size} px")
  g_params = weights.generator_params(g_trees, FLAGS.generator)
  key = jax.random.key(FLAGS.seed)
  w_avg = mean_latent(G, g_params, jax.random.fold_in(key, 1 << 20), 4096)
  out = inference.sample_masks(g_params, a_trees["alpha"], w_avg, key, FLAGS.n, FLAGS.batch,
                               generator=G, alpha_net=AlphaNetwork(G.size),
                               truncation=FLAGS.truncation, threshold=FLAGS.threshold)
  gt = oracle_mask(out["image"])
  result = evaluation.mask_metrics(gt, out["hard_mask"])
  result["soft"] = {"mean_alpha": float(out["alpha"].mean()),
                    "frac_alpha_gt_threshold": float(out["hard_mask"].mean()),
                    "frac_undecided_0.1_0.9": float(((out["alpha"] > 0.1) & (out["alpha"] < 0.9)).mean())}
  result.update(source="generated", n=FLAGS.n, seed=FLAGS.seed, truncation=FLAGS.truncation,
                threshold=FLAGS.threshold, oracle=FLAGS.oracle, generator=FLAGS.generator,
                alpha=FLAGS.alpha)
  print(evaluation.format_table(result))
  if FLAGS.out:
    k = min(FLAGS.grid_samples, FLAGS.n)
    images.save_grid(os.path.join(FLAGS.out, "errors.png"), {
        "image": out["image"][:k], "alpha": out["alpha"][:k],
        "mask": out["hard_mask"][:k, ..., None].astype(np.float32),
        "oracle": gt[:k, ..., None].astype(np.float32),
        "errors (FP red, FN blue)": evaluation.error_overlay(out["image"][:k], out["hard_mask"][:k],
                                                             gt[:k]),
        "background": out["background"][:k]})
  return result


def main(argv):
  del argv
  from l4f_jax.system.metrics_log import quiet_library_logs, write_json
  quiet_library_logs()
  modes = [bool(FLAGS.generator), bool(FLAGS.gt_dir or FLAGS.pred_dir), bool(FLAGS.masks)]
  try:
    if sum(modes) != 1:
      raise EvalError("pass exactly one of --generator (+ --alpha), --gt_dir + --pred_dir, or --masks")
    if modes[1] and not (FLAGS.gt_dir and FLAGS.pred_dir):
      raise EvalError("--gt_dir and --pred_dir go together")
    result = evaluate_generated() if modes[0] else evaluate_folders()
  except (EvalError, FileNotFoundError, ValueError) as e:
    print(f"evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json(os.path.join(FLAGS.out, "metrics.json"), result)
    print(f"wrote {os.path.join(FLAGS.out, 'metrics.json')}")


if __name__ == "__main__":
  app.run(main)
