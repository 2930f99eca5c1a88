r"""Edits that keep the background: SeFa directions, composited with A's masks over a completed
background.

  python -m experiments.edit --latents=workspace/invert/my_photos --direction=0 --strength=3 \
      --out=workspace/edit/my_photos
  python -m experiments.edit --seeds=0,1,2,3 --direction=1 --strength=-3 --out=workspace/edit/seeds

Writes <out>/original, masks, naive (G(w')), preserved (alpha' G(w') + (1 - alpha') B), background
(B), edited_masks (PNG per original), <out>/grid.png and <out>/metrics.json (background PSNR of the
naive and the preserved edits, per completion: G_bg and inpainting). The flags are the fields of
`l4f_jax.programs.edit.EditConfig`.
"""
from __future__ import annotations

from l4f_jax.config import define_flags, from_flags
from l4f_jax.system import cli
from l4f_jax.programs.edit import EditConfig, edit

define_flags(EditConfig)


@cli.main("edit")
def main(argv):
  del argv
  s = edit(from_flags(EditConfig))
  p = s["background_psnr"]
  by = ", ".join(f"{k} {v:.2f}" for k, v in p["preserved_by_completion"].items())
  print(f"edited {s['edited']} image(s); background PSNR naive {p['naive']:.2f} dB, preserved "
        f"{p['preserved']:.2f} dB ({by})")


if __name__ == "__main__":
  cli.run(main)
