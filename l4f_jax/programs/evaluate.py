"""Scoring Labels4Free masks as a library program: `evaluate(config) -> metrics dict`.

  from l4f_jax.config import resolve
  from l4f_jax.programs.evaluate import EvaluateConfig, evaluate
  metrics = evaluate(resolve(EvaluateConfig, masks="tests/data/l4f_custom_masks"))

Four sources of masks (exactly one per run):
  segmenter           a student export run on `images` (default: the built-in world's held-out
                      real test split) and scored against `gt_masks` (paired by stem); the
                      masks go to <out>/segment, FP (yellow) / FN (cyan) pictures to errors.png;
  generator + alpha   `n` seeded samples of a converted generator and a trained alpha network,
                      scored against the l4f_shapes colour oracle; with `out`, also errors.png
                      (image / alpha / mask / oracle / false positives yellow, negatives cyan /
                      background rows for the first `grid_samples` samples);
  gt_dir + pred_dir   two folders of PNG masks, official test_customdata.py conventions;
  masks               a root whose class folders each hold one `*_gt` and one `*_pred` folder.
Before the official scoring (`evaluation.evaluate_mask_folders`, unchanged) every mask is decoded
once: a file that cannot be decoded is refused with one line naming it, and so is a folder holding
0/1 masks (values 0 and 1 only, some 1). The official reading counts only 255 as foreground, so
such masks would silently score foreground IoU 0; save them as 0/255 (or score them with
`evaluation.evaluate_prediction_folder`, which reads 0/1 folders as such).
The table is printed (through `log`) and, with `out`, the metrics go to <out>/metrics.json. `out`
is assembled in a staging folder and renamed into place (`files.staged`); it may not be, hold or
lie inside an input, and an existing `out` is replaced only with `overwrite` and only when it is an
earlier evaluate output.
`experiments/evaluate.py` is the CLI (flags derived from EvaluateConfig).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from l4f_jax.config import nested, option
from l4f_jax.method import masks
from l4f_jax.io import files
from l4f_jax.errors import UserError


REAL_TEST = "workspace/datasets/l4f_shapes_real_test"
SUMMARY = "metrics.json"
OUTPUTS = ("errors.png", "segment", SUMMARY)


@dataclasses.dataclass(frozen=True)
class GeneratedEval:
  """Mode 'generated': seeded samples of a generator and its alpha network vs the oracle."""
  generator: Optional[str] = option(None, "Converted generator weight directory.")
  alpha: Optional[str] = option(None, "Alpha network weight directory (a training run's alpha/ "
                                "export).")
  n: int = option(512, "Number of generated samples to score.", ge=1)
  batch: int = option(16, "Sampling batch.", ge=1)
  seed: int = option(0, "Sample i is drawn from fold_in(key(seed), i); w_avg from the seed's "
                     "'w_avg' stream (as training).")
  truncation: float = option(0.5, "Foreground psi (official test_sample: 0.5).", gt=0)
  threshold: float = option(masks.HARD_MASK_THRESHOLD, "Hard mask = alpha > threshold (official "
                            "--th).", ge=0, le=1)
  oracle: str = option("shapes", "Ground truth for generated samples.", choices=("shapes",))
  grid_samples: int = option(16, "Samples shown in the error grid.", ge=1)
  noise_mode: str = option("random", "Noise maps: 'random' (drawn per sample) or 'const' (the "
                           "generator's stored maps: NVIDIA's noise_mode='const').",
                           choices=("random", "const"))


@dataclasses.dataclass(frozen=True)
class FolderEval:
  """Modes 'folders' and 'classes': PNG masks scored with the official conventions."""
  gt_dir: Optional[str] = option(None, "Folder of ground-truth PNG masks.")
  pred_dir: Optional[str] = option(None, "Folder of predicted PNG masks (paired by natural sort).")
  masks: Optional[str] = option(None, "Root with one folder per class, each holding *_gt and "
                                "*_pred.")


@dataclasses.dataclass(frozen=True)
class SegmenterEval:
  """Mode 'segmenter': a student export on images with exact masks."""
  segmenter: Optional[str] = option(None, "A student segmenter export: segment --images and score "
                                    "them against --gt_masks.")
  images: Optional[str] = option(None, "Images for --segmenter (default: the built-in world's real "
                                 "test split).")
  gt_masks: Optional[str] = option(None, "Exact masks of --images, paired by file stem (0/255, "
                                   "0/1 or 16-bit).")
  fit: str = option("pad", "How --segmenter meets photos of other shapes than its square: pad "
                    "(edge replication), crop (tiles) or stretch (as experiments.segment).",
                    choices=("pad", "crop", "stretch"))


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """One config per mode (their flags keep their names: no prefix) and the output folder."""
  generated: GeneratedEval = nested(GeneratedEval)
  folders: FolderEval = nested(FolderEval)
  student: SegmenterEval = nested(SegmenterEval)
  out: Optional[str] = option(None, "Write metrics.json (and grids) here.")
  overwrite: bool = option(False, "Replace an earlier evaluate output at --out.")

  def inputs(self) -> list[tuple[str, str]]:
    """(flag, path) of every input, which --out may not be, hold or lie inside."""
    g, f, s = self.generated, self.folders, self.student
    return [("--generator", g.generator), ("--alpha", g.alpha), ("--gt_dir", f.gt_dir),
            ("--pred_dir", f.pred_dir), ("--masks", f.masks), ("--segmenter", s.segmenter),
            ("--images", s.images), ("--gt_masks", s.gt_masks)]


def check(cfg: EvaluateConfig) -> str:
  """The mode ('generated', 'folders', 'classes' or 'segmenter') after the checks that need no
  work."""
  g, f, st = cfg.generated, cfg.folders, cfg.student
  modes = {"generated": bool(g.generator), "folders": bool(f.gt_dir or f.pred_dir),
           "classes": bool(f.masks), "segmenter": bool(st.segmenter)}
  if sum(modes.values()) != 1:
    raise UserError("pass exactly one of --generator (+ --alpha), --gt_dir + --pred_dir, "
                    "--masks, or --segmenter (+ --images and --gt_masks)")
  if modes["segmenter"]:
    if not cfg.out:
      raise UserError("--segmenter needs --out=<dir> (the masks it writes are scored)")
    if bool(st.images) != bool(st.gt_masks):
      raise UserError("--images and --gt_masks go together (or pass neither for the built-in "
                      f"real test split {REAL_TEST})")
    for flag, path in (("images", st.images or REAL_TEST + "/images"),
                       ("gt_masks", st.gt_masks or REAL_TEST + "/masks")):
      if not os.path.isdir(path):
        raise UserError(f"--{flag}={path}: no such directory"
                        + ("" if st.images else "; run the main command (experiments.pipeline) "
                           "once to build the real test split"))
  if modes["folders"] and not (f.gt_dir and f.pred_dir):
    raise UserError("--gt_dir and --pred_dir go together")
  if modes["generated"] and not g.alpha:
    raise UserError("--generator needs --alpha=<alpha weight directory> (a training run's alpha/ "
                    "export, or experiments.convert of an official checkpoint)")
  if cfg.out:
    files.check_output_dir(cfg.out, cfg.overwrite, program="evaluate", summary=SUMMARY,
                           owned=OUTPUTS, inputs=cfg.inputs())
  return next(m for m, on in modes.items() if on)


def class_pairs(root: str) -> dict[str, tuple[str, str]]:
  """{class: (gt folder, pred folder)} of the class folders under `root`."""
  if not os.path.isdir(root):
    raise UserError(f"--masks={root}: no such directory")
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
    raise UserError(f"--masks={root}: no class folder holds one '*_gt' and one '*_pred' folder")
  return pairs


def _check_mask_folder(folder: str, where: str = "", flag: str = "") -> None:
  """Decodes every PNG the official scoring will read; refuses an undecodable file or 0/1 masks
  (module docstring) with one line."""
  # pylint: disable=import-outside-toplevel
  import numpy as np
  from PIL import Image

  from l4f_jax.method import evaluation
  zero_one = []
  for path in evaluation.list_pngs(folder):
    try:
      with Image.open(path) as img:
        grey = np.asarray(img.convert("LA"))[..., 0]  # the official reading (read_mask)
    except Exception as e:  # pylint: disable=broad-except  # any decoder failure: unreadable mask
      reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f"{where}{path}: unreadable mask ({reason}); replace or remove the file") \
          from None
    if grey.size and grey.max() == 1:  # values 0 and 1 only, some 1
      zero_one.append(os.path.basename(path))
  if zero_one:
    shown = os.path.basename(folder) if where else f"{flag}{folder}"
    raise UserError(f"{where}{shown}: {len(zero_one)} mask(s) hold only the values 0 and 1 (e.g. "
                    f"{zero_one[0]}), all background to the official scoring; save them as 0/255")


def _score_folders(gt: str, pred: str, where: str = "", flags=("", "")) -> dict:
  from l4f_jax.method import evaluation  # pylint: disable=import-outside-toplevel
  for folder, flag in zip((gt, pred), flags):
    if os.path.isdir(folder):
      _check_mask_folder(folder, where, flag)
  try:
    return evaluation.evaluate_mask_folders(gt, pred)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"{where}{e}") from None


def evaluate_folders(cfg: FolderEval) -> dict:
  """Metrics of --masks (one entry per class) or of --gt_dir against --pred_dir."""
  if cfg.masks:
    return {name: _score_folders(gt, pred, f"--masks={cfg.masks} ({name}): ")
            for name, (gt, pred) in class_pairs(cfg.masks).items()}
  for flag, path in (("gt_dir", cfg.gt_dir), ("pred_dir", cfg.pred_dir)):
    if not os.path.isdir(path):
      raise UserError(f"--{flag}={path}: not a directory of PNG masks")
  return _score_folders(cfg.gt_dir, cfg.pred_dir, flags=("--gt_dir=", "--pred_dir="))


def evaluate_generated(cfg: GeneratedEval, out_dir: Optional[str] = None) -> dict:
  """Hard masks of `n` samples against the l4f_shapes oracle (+ errors.png under `out`)."""
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np

  from l4f_jax.datasets.shapes import oracle_mask
  from l4f_jax.method import evaluation, inference
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.io import images
  from l4f_jax.system import training, weights

  gen = weights.load_generator(cfg.generator)
  a_params = weights.load_alpha(cfg.alpha, gen)
  w_avg = training.generator_w_avg(gen, cfg.seed)
  out = inference.sample_masks(gen.params, a_params, w_avg, jax.random.key(cfg.seed), cfg.n,
                               cfg.batch, generator=gen.module, alpha_net=AlphaNetwork(gen.size),
                               truncation=cfg.truncation, threshold=cfg.threshold,
                               const_noise=training.generator_noise(gen, cfg.noise_mode))
  gt = oracle_mask(out["image"])
  result = evaluation.mask_metrics(gt, out["hard_mask"])
  alpha = out["alpha"]
  result["soft"] = {"mean_alpha": float(alpha.mean()),
                    "frac_alpha_gt_threshold": float(out["hard_mask"].mean()),
                    "frac_undecided_0.1_0.9": float(masks.undecided(alpha).mean())}
  result.update(source="generated", n=cfg.n, seed=cfg.seed, truncation=cfg.truncation,
                threshold=cfg.threshold, oracle=cfg.oracle, generator=cfg.generator,
                alpha=cfg.alpha)
  if out_dir:
    k = min(cfg.grid_samples, cfg.n)
    images.save_grid(os.path.join(out_dir, "errors.png"), {
        "image": out["image"][:k], "alpha": alpha[:k],
        "mask": out["hard_mask"][:k, ..., None].astype(np.float32),
        "oracle": gt[:k, ..., None].astype(np.float32),
        "errors (FP yellow, FN cyan)": evaluation.error_overlay(out["image"][:k], out["hard_mask"][:k],
                                                             gt[:k]),
        "background": out["background"][:k]})
  return result


def evaluate_segmenter(cfg: SegmenterEval, out_dir: str) -> dict:
  """Segments the images (into <out>/segment) and scores the masks against the exact ones, paired
  by stem; FP (yellow) / FN (cyan) pictures in <out>/errors.png."""
  images = cfg.images or os.path.join(REAL_TEST, "images")
  gt = cfg.gt_masks or os.path.join(REAL_TEST, "masks")
  result = score_segmenter(cfg.segmenter, images, gt, os.path.join(out_dir, "segment"),
                           errors_png=os.path.join(out_dir, "errors.png"), fit=cfg.fit)
  result.update(source="segmenter", images=images, gt_masks=gt)
  return result


def evaluate(cfg: EvaluateConfig, log: Callable[[str], None] = print) -> dict:
  """Scores the masks `cfg` names, logs the table (and the metrics.json written); returns the
  metrics."""
  from l4f_jax.method import evaluation  # pylint: disable=import-outside-toplevel
  from l4f_jax.system.metrics_log import write_json  # pylint: disable=import-outside-toplevel
  mode = check(cfg)

  def run(out_dir):
    if mode == "segmenter":
      return evaluate_segmenter(cfg.student, out_dir)
    if mode == "generated":
      return evaluate_generated(cfg.generated, out_dir)
    return evaluate_folders(cfg.folders)

  if not cfg.out:
    result = run(None)
    log(evaluation.format_table(result))
    return result
  out = os.path.abspath(cfg.out)
  with files.staged(out, program="evaluate") as st:
    result = run(st.path)
    write_json(os.path.join(st.path, SUMMARY), result)
    st.commit()
  log(evaluation.format_table(result))
  log(f"wrote {os.path.join(out, SUMMARY)}")
  return result


def score_masks(images_dir: str, gt_dir: str, seg_out: str, errors_png: str = "") -> dict:
  """Scores <seg_out>/masks (a segmentation's 0/255 masks) against the exact masks in `gt_dir`
  (paired by stem, `evaluation.evaluate_prediction_folder`); with `errors_png`, a grid of image /
  mask / exact mask / FP (yellow) and FN (cyan) overlay of the first inputs."""
  from l4f_jax.method import evaluation  # pylint: disable=import-outside-toplevel
  result = evaluation.evaluate_prediction_folder(gt_dir, os.path.join(seg_out, "masks"))
  if errors_png:
    _error_pictures(images_dir, gt_dir, seg_out, errors_png)
  return result


def score_segmenter(segmenter: str, images_dir: str, gt_dir: str, out: str,
                    errors_png: str = "", threshold=None, fit: str = "pad") -> dict:
  """Segments `images_dir` into the folder `out` (masks/, alpha/, cutout/ as experiments.segment
  writes them, through `system.segmentation`) and scores the masks (`score_masks`). Returns the
  metrics plus 'segmented', 'skipped', 'threshold' and 'fit'."""
  # pylint: disable=import-outside-toplevel
  from l4f_jax.io import image_io
  from l4f_jax.system import segmentation
  model = segmentation.load_model(segmenter)
  threshold = model.threshold if threshold is None else threshold
  paths = image_io.list_inputs(images_dir)
  stems = image_io.output_stems(paths, images_dir)
  skipped, done = [], 0
  for chunk in segmentation.predictions(model, list(zip(range(len(paths)), paths, stems)),
                                        image_io.MAX_PIXELS, skipped, fit):
    for _, _, stem, rgb, alpha in chunk:
      image_io.write_segmentation(out, stem, rgb, alpha, threshold)
    done += len(chunk)
  result = score_masks(images_dir, gt_dir, out, errors_png)
  result.update(segmented=done, skipped=len(skipped), threshold=threshold, fit=fit,
                segmenter=os.path.abspath(segmenter))
  return result


def _error_pictures(images_dir: str, gt_dir: str, seg_out: str, path: str, n: int = 16,
                    thumb: int = 128) -> None:
  """Image / mask / exact mask / FP-FN overlay of the first `n` inputs. Inputs of several sizes
  are drawn at a common thumbnail size: each scaled so that its longer side is `thumb` (masks by
  nearest neighbour) and letterboxed on grey."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from l4f_jax.method import evaluation  # pylint: disable=import-outside-toplevel
  from l4f_jax.io import image_io, images  # pylint: disable=import-outside-toplevel
  names = sorted(os.listdir(os.path.join(seg_out, "masks")), key=evaluation.natural_key)[:n]
  stems = [os.path.splitext(f)[0] for f in names]
  find = lambda d, s: next(os.path.join(d, f) for f in os.listdir(d)
                           if os.path.splitext(f)[0] == s)
  load = lambda d, s: image_io.read_rgb(find(d, s))
  img = [load(images_dir, s) for s in stems]
  gt = [load(gt_dir, s)[..., 0] > 127 for s in stems]
  pred = [load(os.path.join(seg_out, "masks"), s)[..., 0] > 127 for s in stems]
  if len({x.shape for x in img}) != 1:
    img, gt, pred = (list(x) for x in zip(*(image_io.thumbnail(i, [g, p], thumb)
                                            for i, g, p in zip(img, gt, pred))))
  img, gt, pred = np.stack(img), np.stack(gt), np.stack(pred)
  images.save_grid(path, {"image": img, "mask": pred, "exact mask": gt,
                          "errors (FP yellow, FN cyan)": evaluation.error_overlay(img, pred, gt)})
