r"""The whole framework on one command: A -> pairs -> student -> masks of real images -> eval.json.

  python -m experiments.pipeline --flagfile=experiments/flags/shapes_pipeline.flags

The flags are those of experiments.train (stage 1), those of experiments.make_pairs and
experiments.train_student prefixed `pairs_` and `student_` (paths, seed and devices derived), and
--real_test*: `l4f_jax.programs.pipeline.PipelineConfig`, whose module docstring lists the stages
and outputs. Re-running resumes or reuses every stage.
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.pipeline import PipelineConfig, run_pipeline

define_flags(PipelineConfig)
cli.define_distributed_flags()


@cli.main("pipeline")
def main(argv):
  del argv
  cfg = from_flags(PipelineConfig)
  cli.init_distributed()
  run_pipeline(cfg)


if __name__ == "__main__":
  cli.run(main)
