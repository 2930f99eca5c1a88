"""The whole framework in one program: A -> pairs -> student -> segment real images -> eval.json.

  python -m experiments.pipeline --flagfile=experiments/flags/shapes_pipeline.flags
  (the README's main command)

Stages, all library programs of this package run in-process on one system (one config pattern, one
loading path, one loop), each resuming or reusing its output when re-run:
  1. Labels4Free (`train_labels4free`): A and D on the frozen generator; A exported to
     <workdir>/alpha, its hard masks of generated images scored against the oracle (eval_samples).
  2. Pairs (`pairs`): `pairs_n` generated (image, soft alpha, hard mask) triples in <workdir>/pairs.
  3. Student (`train_student`): a U-Net trained on them (run <workdir>/student), exported to
     <workdir>/segmenter.
  4. Real images (`segment`): the student segments the built-in world's held-out real test split
     (`real_test`: real l4f_shapes renders with exact masks, never used to train G, A or the
     student) into <workdir>/real_test/{masks,alpha,cutout}.
  5. <workdir>/eval.json: {'labels4free': A on generated images vs the oracle, 'student': the
     student on the real test split vs the exact masks (official metrics), 'timing'}; FP/FN
     pictures in <workdir>/real_test_errors.png.
The flags of stage 1 are experiments.train's; stages 2 and 3 take experiments.make_pairs' and
experiments.train_student's flags prefixed `pairs_` and `student_` (e.g. --pairs_n, --student_steps,
--student_aug_flip), less the paths, seed and devices, which the pipeline derives from --workdir and
stage 1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

from l4f_jax.config import nested, option, to_dict
from l4f_jax.errors import UserError
from l4f_jax.system import metrics_log, weights
from l4f_jax.programs import evaluate, pairs, segment
from l4f_jax.programs import train_labels4free, train_student


# What the pipeline sets itself: every path from --workdir, and the seed and devices of stage 1.
_PAIRS_DERIVED = ("generator", "alpha", "out", "overwrite", "seed", "num_devices")
_STUDENT_DERIVED = ("pairs", "workdir", "export", "overwrite", "seed", "num_devices",
                    "sample_every", "save_every", "log_every")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  labels4free: train_labels4free.TrainConfig = nested(train_labels4free.TrainConfig)
  pairs: pairs.PairsConfig = nested(pairs.PairsConfig, prefix="pairs_", derived=_PAIRS_DERIVED)
  student: train_student.StudentConfig = nested(train_student.StudentConfig, prefix="student_",
                                                derived=_STUDENT_DERIVED)
  real_test: str = option("workspace/datasets/l4f_shapes_real_test", "Held-out real test split "
                          "of the built-in world (images/ + masks/; built if missing); empty = "
                          "no real-image stage (datasets without exact masks).")
  real_test_n: int = option(512, "Images in the real test split when it is built.", ge=1)


def _pairs_config(cfg: PipelineConfig, workdir: str) -> pairs.PairsConfig:
  l4f = cfg.labels4free
  return dataclasses.replace(cfg.pairs, generator=l4f.generator,
                             alpha=os.path.join(workdir, "alpha"),
                             out=os.path.join(workdir, "pairs"), seed=l4f.seed,
                             num_devices=l4f.num_devices or 0)


def _student_config(cfg: PipelineConfig, workdir: str) -> train_student.StudentConfig:
  """The student stage: its flags, the paths under --workdir, grids and checkpoints at each third
  of the steps, metrics at each fifteenth."""
  steps = cfg.student.steps
  return dataclasses.replace(
      cfg.student, pairs=os.path.join(workdir, "pairs"), workdir=os.path.join(workdir, "student"),
      export=os.path.join(workdir, "segmenter"), seed=cfg.labels4free.seed,
      num_devices=cfg.labels4free.num_devices, sample_every=max(steps // 3, 1),
      save_every=max(steps // 3, 1), log_every=max(steps // 15, 1))


def _reuse_pairs(pc: pairs.PairsConfig) -> bool:
  """True if <workdir>/pairs holds a finished dataset made with the same settings from the same
  alpha network (content fingerprints), so a re-run need not regenerate it."""
  try:
    with open(os.path.join(pc.out, pairs.SUMMARY)) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return False
  want = to_dict(pc)
  same = all(stored.get("config", {}).get(k) == want[k]
             for k in ("n", "truncation", "max_undecided", "seed", "threshold"))
  alpha = weights.load_weights(pc.alpha)[1].get("alpha")
  return same and stored.get("alpha_fingerprint") == weights.fingerprint(alpha)


def run_pipeline(cfg: PipelineConfig) -> Optional[dict]:
  """Runs the stages (module docstring); returns what eval.json holds (None on the processes
  other than 0 of a multi-process run, which segment their share of the real test split)."""
  from l4f_jax.datasets.shapes import ensure_real_test_split  # pylint: disable=import-outside-toplevel
  l4f = cfg.labels4free
  workdir = os.path.abspath(l4f.workdir)
  timing = {}
  t0 = time.perf_counter()
  # The real test split first: cheap, and a bad --real_test fails before any training.
  size = _generator_size(l4f) if cfg.real_test else None
  try:
    real = (ensure_real_test_split(cfg.real_test, size=size, n=cfg.real_test_n)
            if cfg.real_test else None)
  except UserError as e:
    raise UserError(f"--real_test: {e} (or --real_test= to skip the real test split)") from None
  timing["real_test_split_s"] = round(time.perf_counter() - t0, 1)

  t = time.perf_counter()
  l4f_out = train_labels4free.train_and_evaluate(l4f)
  timing["labels4free_s"] = round(time.perf_counter() - t, 1)

  t = time.perf_counter()
  pc = _pairs_config(cfg, workdir)
  if not _reuse_pairs(pc):
    pairs.make_pairs(dataclasses.replace(pc, overwrite=True))
  timing["pairs_s"] = round(time.perf_counter() - t, 1)

  t = time.perf_counter()
  sc = _student_config(cfg, workdir)
  train_student.train_and_evaluate(sc)
  timing["student_s"] = round(time.perf_counter() - t, 1)

  t = time.perf_counter()
  student_eval = None
  if real:
    # The paths as given (not absolute), so that eval.json names no checkout's folders.
    images, exact = (os.path.join(cfg.real_test, d) for d in ("images", "masks"))
    seg_out = os.path.join(l4f.workdir, "real_test")
    summary = segment.segment(segment.SegmentConfig(segmenter=sc.export, images=images,
                                                    out=seg_out, overwrite=True))
    if summary is None:  # another process than 0 segmented its share; process 0 scores, reports
      return None
    student_eval = evaluate.score_masks(images, exact, seg_out,
                                        os.path.join(workdir, "real_test_errors.png"))
    student_eval.update(segmented=summary["segmented"], skipped=summary["skipped"],
                        threshold=summary["threshold"], segmenter=sc.export)
  timing["segment_and_score_s"] = round(time.perf_counter() - t, 1)
  timing["total_s"] = round(time.perf_counter() - t0, 1)
  result = {"labels4free": l4f_out["eval"], "student": student_eval, "real_test": cfg.real_test,
            "timing": timing}
  metrics_log.write_json(os.path.join(workdir, "eval.json"), result)
  fg = lambda r: f"{r['foreground']['iou']:.4f}" if r else "not scored"
  student = (f"student on {student_eval['segmented']} real test images fg IoU {fg(student_eval)}, "
             f"mIoU {student_eval['miou']:.4f}" if student_eval else "no real test split")
  metrics_log.log_console(f"pipeline: A on generated images fg IoU {fg(l4f_out['eval'])}; "
                          f"{student}; {timing['total_s']:.0f} s; {workdir}/eval.json")
  return result


def _generator_size(l4f) -> int:
  return int(weights.read_config(l4f.generator)["size"])
