r"""Edits that keep the background: SeFa directions, composited with A's masks over a completed
background.

  python -m experiments.edit --latents=workspace/invert/my_photos --direction=0 --strength=3 \
      --out=workspace/edit/my_photos
  python -m experiments.edit --seeds=0,1,2,3 --direction=1 --strength=-3 --out=workspace/edit/seeds

The original is the photo an `experiments.invert` output inverted (or G(w) of bare latents and
seeds). Writes <out>/original, masks, naive (G(w')), preserved (alpha' G(w') + (1 - alpha') B),
background (B), edited_masks (PNG per original), <out>/grid.png and <out>/metrics.json (the
leakage check, and with --images=<a split of the built-in world> the PSNR against the true
background over the edit's background and the vacated region, per completion: G_bg and
inpainting). The flags are the fields of `l4f_jax.programs.edit.EditConfig`.
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
  p = s["leakage_psnr"]
  by = ", ".join(f"{k} {v:.2f}" for k, v in p["preserved_by_completion"].items())
  print(f"edited {s['edited']} image(s) of {s['original']}; leakage check (alpha <= 0.9 in both) "
        f"naive {p['naive']:.2f} dB, preserved {p['preserved']:.2f} dB ({by})")
  truth = dict(s.get("true_background_psnr", {}))
  if truth:
    print(f"the photo itself vs its true background: {truth.pop('photo_itself')['photo']:.2f} dB")
  for region, v in truth.items():
    print(f"vs the true background, {region} ({v['pixels']} px): naive {v['naive']:.2f} dB, "
          f"preserved inpaint {v['inpaint']:.2f} dB, g_bg {v['g_bg']:.2f} dB")


if __name__ == "__main__":
  cli.run(main)
