r"""Converts a PyTorch checkpoint or an NVIDIA network snapshot to an l4f_jax weight directory
(config.json + Orbax state).

  python -m experiments.convert --src=stylegan2-ffhq-config-f.pt --dst=weights/ffhq
  python -m experiments.convert --src=checkpoint/010000.pt --dst=weights/l4f_ffhq
  python -m experiments.convert --src=network-snapshot-025000.pkl --dst=weights/my_gan

Reads rosinality files ('g_ema', and 'g', 'd', 'latent_avg' where present), official Labels4Free
checkpoints (alpha from 'bg_extractor_ema', else 'bg_extractor' without its `module.` prefix; 'd';
the generator under 'g', since they have no 'g_ema') and NVIDIA's stylegan2-ada-pytorch / stylegan3
(--cfg=stylegan2) snapshots ('G_ema', 'D'). Trees keep their checkpoint names; consumers take
'g_ema' when present, else 'g' (`weights.generator_params`).

Files are read without torch by a restricted unpickler that never runs code from the file
(`l4f_jax.io.torch_pickle`); --allow_pickle is accepted for old command lines and does nothing.
The flags are the fields of `l4f_jax.system.convert.ConvertConfig`.
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
