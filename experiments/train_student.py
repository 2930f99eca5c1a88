r"""Train the student segmenter on generated pairs (the raw-image path of Labels4Free).

  python -m experiments.train_student --pairs=workspace/datasets/shapes_pairs \
      --workdir=workspace/runs/student --aug_crop_scale=0.6 --aug_blur=1.0

The flags are the fields of `l4f_jax.programs.train_student.StudentConfig` (augmentations under
--aug_*); the program is its `train_and_evaluate`. Re-running the same command resumes.
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.train_student import StudentConfig, train_and_evaluate

define_flags(StudentConfig)
cli.define_distributed_flags()


@cli.main("train_student")
def main(argv):
  del argv
  cfg = from_flags(StudentConfig)
  cli.init_distributed()
  out = train_and_evaluate(cfg)
  print(f"segmenter after {out['steps']} steps in {out['export']}")


if __name__ == "__main__":
  cli.run(main)
