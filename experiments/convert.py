r"""Converts a PyTorch checkpoint to an l4f_jax weight directory (config.json + Orbax state).

  python -m experiments.convert --src=stylegan2-ffhq-config-f.pt --dst=weights/ffhq
  python -m experiments.convert --src=checkpoint/010000.pt --dst=weights/l4f_ffhq --allow_pickle

Reads rosinality files ('g_ema', and 'g', 'd', 'latent_avg' where present) and official Labels4Free
checkpoints (alpha from 'bg_extractor_ema', else 'bg_extractor' without its `module.` prefix; 'd';
the generator under 'g', since they have no 'g_ema'). Trees keep their checkpoint names; consumers
take 'g_ema' when present, else 'g' (`weights.generator_params`).

--allow_pickle loads with torch.load(weights_only=False), which can execute code from the file: use
it only for files you trust (training checkpoints need it for their argparse 'args').
"""
from __future__ import annotations

from absl import flags

from l4f_jax.system import cli
from l4f_jax.system.convert import convert_file
from l4f_jax.config import stop_if_parse_only
from l4f_jax.errors import UserError

_SRC = flags.DEFINE_string("src", None, "PyTorch checkpoint (.pt) to convert.")
_DST = flags.DEFINE_string("dst", None, "Output weight directory (must not exist).")
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "Load with weights_only=False (trusted files only: it can run code).")
_LR_MLP = flags.DEFINE_float("lr_mlp", 0.01, "Mapping-network lr multiplier the generator used.")
_SIZE = flags.DEFINE_integer("size", None, "Generator size, only for alpha-only files.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing weight directory at --dst.")


@cli.main("convert")
def main(argv):
  del argv
  if not _SRC.value or not _DST.value:
    raise UserError("--src=<checkpoint.pt> and --dst=<new directory> are required")
  stop_if_parse_only()
  convert_file(_SRC.value, _DST.value, _ALLOW_PICKLE.value, _LR_MLP.value, _SIZE.value,
               _OVERWRITE.value)


if __name__ == "__main__":
  cli.run(main)
