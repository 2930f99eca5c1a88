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
  python -m experiments.evaluate --masks=tests/data/l4f_custom_masks

Prints a table, writes metrics.json (and, for generated samples, a grid marking false positives yellow
and false negatives cyan) under --out. Generated samples use the training program's w-bar
(`l4f_jax.system.training.w_avg` of --seed). The flags are the fields of
`l4f_jax.programs.evaluate.EvaluateConfig`; the program is its `evaluate`.
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.evaluate import EvaluateConfig, evaluate

define_flags(EvaluateConfig)


@cli.main("evaluate")
def main(argv):
  del argv
  evaluate(from_flags(EvaluateConfig))


if __name__ == "__main__":
  cli.run(main)
