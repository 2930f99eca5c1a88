r"""Masks of real images by GAN inversion: project each image into G, segment G's features with A.

  python -m experiments.invert --generator=experiments/assets/shapes64 \
      --alpha=workspace/runs/shapes/alpha --images=my_photos/ --out=workspace/invert/my_photos

Writes <out>/masks/<stem>.png (0 / 255, alpha > 0.9, at each input's own size),
<out>/latents/<stem>.npy, <out>/noise/<stem>.npz, <out>/recon/<stem>.png, <out>/grid.png and
<out>/metrics.json (PSNR per image and mean, seconds per image). Under jax.distributed
(--coordinator_address/--num_processes/--process_id, or a detected cluster) each process inverts
every num_processes-th input into one shared staging folder, and process 0 renames it to --out
once all are done. The flags are the fields of `l4f_jax.programs.invert.InvertConfig` (with
--steps, --latent=w|w+, --lr, --noise_regularize of `l4f_jax.method.inversion.ProjectorConfig`).
"""
from __future__ import annotations

from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.invert import InvertConfig, invert

define_flags(InvertConfig)
cli.define_distributed_flags()


@cli.main("invert")
def main(argv):
  del argv
  cfg = from_flags(InvertConfig)
  cli.init_distributed()
  s = invert(cfg)
  if s is None:  # a process other than 0 of a multi-process run
    return
  print(f"inverted {s['inverted']} image(s), skipped {s['skipped']}; recon PSNR "
        f"{s['psnr_mean']:.2f} dB, {s['seconds_per_image']:.2f} s per image")


if __name__ == "__main__":
  cli.run(main)
