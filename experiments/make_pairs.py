r"""Generated (image, soft alpha, hard mask) pairs for the student segmenter, as a tfds dataset.

  python -m experiments.make_pairs --generator=experiments/assets/shapes64 \
      --alpha=workspace/runs/shapes/alpha --out=workspace/datasets/shapes_pairs --n=4096

The flags are the fields of `l4f_jax.programs.pairs.PairsConfig`; its module docstring describes the
sampling (deterministic from --seed), the sharding over devices and hosts and the atomic write.
"""
from __future__ import annotations


from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.pairs import PairsConfig, make_pairs

define_flags(PairsConfig)
cli.define_distributed_flags()


@cli.main("make_pairs")
def main(argv):
  del argv
  cfg = from_flags(PairsConfig)
  cli.init_distributed()
  summary = make_pairs(cfg)
  if summary:
    print(f"{summary['kept']} pairs in {summary['path']}; train the student with "
          f"--pairs={cfg.out}")


if __name__ == "__main__":
  cli.run(main)
