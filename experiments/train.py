r"""Labels4Free training: an alpha network A (and a weak D) on top of a frozen StyleGAN2 generator.

  python -m experiments.train --flagfile=experiments/flags/ffhq.flags
  python -m experiments.train --flagfile=experiments/flags/lsun_cat.flags --emulate_devices=4

The flags are the fields of `l4f_jax.programs.train_labels4free.TrainConfig` (official train.py names
and defaults); the program is its `train_and_evaluate`, whose docstring lists the outputs in
--workdir. Re-running the same command resumes from the latest checkpoint.

Start from a flagfile. Without one, the flags keep the official train.py defaults (1001
iterations, fg coverage 0.25, no background-coverage guard), which drift or collapse on the
built-in world; its tested settings are experiments/flags/shapes.flags:

  python -m experiments.train --flagfile=experiments/flags/shapes.flags
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.train_labels4free import TrainConfig, train_and_evaluate

define_flags(TrainConfig)
cli.define_distributed_flags()


@cli.main("train")
def main(argv):
  del argv
  cfg = from_flags(TrainConfig)
  cli.init_distributed()
  train_and_evaluate(cfg)


if __name__ == "__main__":
  cli.run(main)
