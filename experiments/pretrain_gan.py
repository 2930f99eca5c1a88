r"""Train a small StyleGAN2 (rosinality recipe) on a prepared dataset.

  python -m experiments.pretrain_gan --flagfile=experiments/flags/shapes_gan.flags

The flags are the fields of `l4f_jax.programs.train_gan.GANRunConfig`; the program is its
`train_and_evaluate` (sharded over every device, Orbax resume, EMA sample grids, --export of the
EMA generator, G and D in the converted-weight format).
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.train_gan import GANRunConfig, train_and_evaluate

define_flags(GANRunConfig)
cli.define_distributed_flags()


@cli.main("pretrain_gan")
def main(argv):
  del argv
  cfg = from_flags(GANRunConfig)
  cli.init_distributed()
  train_and_evaluate(cfg)


if __name__ == "__main__":
  cli.run(main)
