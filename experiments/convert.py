r"""Converts a PyTorch checkpoint to an l4f_jax weight directory (config.json + Orbax state).

  python -m experiments.convert --src=stylegan2-ffhq-config-f.pt --dst=weights/ffhq
  python -m experiments.convert --src=checkpoint/010000.pt --dst=weights/l4f_ffhq --allow_pickle

Reads rosinality files ('g_ema', and 'g', 'd', 'latent_avg' where present) and official Labels4Free
checkpoints (alpha from 'bg_extractor_ema', else 'bg_extractor' without its `module.` prefix; 'd';
the generator under 'g', since they have no 'g_ema'). Trees keep their checkpoint names; consumers
take 'g_ema' when present, else 'g' (`weights.generator_params`).

--allow_pickle loads with torch.load(weights_only=False), which can execute code from the file: use
it only for files you trust (training checkpoints need it for their argparse 'args'). The flags
are the fields of `l4f_jax.system.convert.ConvertConfig`.
"""
from __future__ import annotations

from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.system.convert import ConvertConfig, convert_file

define_flags(ConvertConfig)


@cli.main("convert")
def main(argv):
  del argv
  cfg = from_flags(ConvertConfig)
  convert_file(cfg.src, cfg.dst, cfg.allow_pickle, cfg.lr_mlp, cfg.size, cfg.overwrite)


if __name__ == "__main__":
  cli.run(main)
