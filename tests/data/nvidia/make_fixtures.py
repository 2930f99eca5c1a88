r"""Builds the NVIDIA network-pickle fixtures of tests/test_nvidia.py with NVIDIA's own code, on CPU.

NVIDIA's code is not part of this repository (NVIDIA Source Code License). Get it once:

  git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/stylegan2-ada-pytorch
  git clone https://github.com/NVlabs/stylegan3 /tmp/stylegan3
  python tests/data/nvidia/make_fixtures.py --ada=/tmp/stylegan2-ada-pytorch --sg3=/tmp/stylegan3

(torch CPU wheel: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu.
Their custom CUDA ops fall back to their reference implementations on CPU.)

For every configuration it builds random-init G / D with NVIDIA's classes (G_ema a deep copy of G,
its `w_avg` set to a nonzero random vector so that truncation is tested), writes a snapshot dict
exactly as their `training/training_loop.py` does (G, D, G_ema, augment_pipe, training_set_kwargs;
each module `copy.deepcopy(...).eval().requires_grad_(False).cpu()`, then `pickle.dump`), and the
golden outputs of NVIDIA's own forward pass (`<name>.npz`): images at psi = 1 and psi = 0.7 with
noise_mode='const' and force_fp32=True, and D's logits on fixed random images (force_fp32=True).
Pixels of images over 32 px are stored as a fixed random subset plus 8 x 8 block means, to keep
the files small. `<name>.json` records the configuration and how far NVIDIA's own fp16 forward on
CPU lands from the float32 one.

Every persistent module of a snapshot embeds its defining module's source code
(`torch_utils/persistence.py`, meta['module_src']). That is NVIDIA's code under their licence, so
the pickles here carry the placeholder MODULE_SRC in its place; a reader that never executes the
source cannot tell the difference. NVIDIA's own loader would need the real source.

Also written: `cond_g.pkl` (a conditional generator, c_dim = 2) and `sg3_t.pkl` (a StyleGAN3-T
generator), which the converter must refuse.
"""
import argparse
import copy
import json
import os
import pickle
import subprocess
import sys

import numpy as np

MODULE_SRC = "# NVIDIA module source removed from this test fixture (NVIDIA Source Code License)\n"
HERE = os.path.dirname(os.path.abspath(__file__))

# name: (repo, resolution, z/w dim, mapping layers, synthesis kwargs, D kwargs, extras)
CONFIGS = {
    # 8 mapping layers (config-f's mapping), no clamp, fp32 everywhere.
    "ada_map8_32": ("ada", 32, 32, 8, dict(channel_base=256, channel_max=16),
                    dict(channel_base=256, channel_max=16, epilogue_kwargs=dict(mbstd_group_size=4)),
                    {}),
    # conv_clamp 256 with fp16 in the 4 highest resolutions (NVIDIA's configs), biases pushed over
    # the clamp; 2 mapping layers ('auto'); minibatch stddev group 2 with 2 channels; augment pipe.
    "ada_clamp_fp16_64": ("ada", 64, 32, 2, dict(channel_base=512, channel_max=16, conv_clamp=256,
                                                 num_fp16_res=4),
                          dict(channel_base=512, channel_max=16, conv_clamp=256, num_fp16_res=4,
                               epilogue_kwargs=dict(
                              mbstd_group_size=2, mbstd_num_channels=2)),
                          dict(big_bias=True, augment=True)),
    # config-f ('stylegan2' cfg: channel_base 32768 * fmaps, channel_max 512, 8 mapping layers,
    # clamp 256, 4 fp16 resolutions), narrowed to fmaps = 1/256 (4 px: 32 channels .. 128 px: 1).
    "ada_cfgf_128": ("ada", 128, 16, 8, dict(channel_base=128, channel_max=512, conv_clamp=256,
                                             num_fp16_res=4),
                     dict(channel_base=128, channel_max=512, conv_clamp=256, num_fp16_res=4),
                     {}),
    # 256 px ('paper256': minibatch stddev group 8), narrow; G and G_ema are one object here (the
    # pickle stores it once) to keep the file small.
    "ada_256": ("ada", 256, 16, 8, dict(channel_base=256, channel_max=16, conv_clamp=256,
                                        num_fp16_res=4),
                dict(channel_base=256, channel_max=16, conv_clamp=256, num_fp16_res=4,
                     epilogue_kwargs=dict(mbstd_group_size=8)), dict(shared_g=True)),
    # The stylegan3 repository's StyleGAN2 networks (--cfg=stylegan2).
    "sg3_stylegan2_32": ("sg3", 32, 32, 2, dict(channel_base=256, channel_max=16, conv_clamp=256,
                                                num_fp16_res=4),
                         dict(channel_base=256, channel_max=16, conv_clamp=256, num_fp16_res=4), {}),
}
BATCH = 2
PSIS = (1.0, 0.7)


def _set_placeholder_source(persistence):
  for cls in persistence._decorators:  # pylint: disable=protected-access
    cls._orig_module_src = MODULE_SRC  # what __reduce__ writes as meta['module_src']


def _snapshot(G, D, G_ema, augment_pipe, shared_g=False):
  """training_loop.py's snapshot dict: deep copies in eval mode on CPU, no gradients."""
  import torch
  data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
              training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                       path="~/datasets/fixture.zip", use_labels=False,
                                       max_size=None, xflip=False, resolution=G.img_resolution))
  for key, value in list(data.items()):
    if isinstance(value, torch.nn.Module):
      data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
  if shared_g:
    data["G"] = data["G_ema"]
  return data


def _push_biases(G, D):
  """First channel of the bias of every clamped conv of G and D far past 256, so that conv_clamp
  acts; G's ToRGB weights scaled by 0.02 so that the images stay near [-10, 10], where float32
  resolves 1e-4 (ToRGB's own clamp is covered by tests/test_nvidia.py's unit test)."""
  import torch
  with torch.no_grad():
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
      if name.endswith(".bias") and ("synthesis" in name or "fromrgb" in name or ".conv" in name):
        if "affine" not in name and "mapping" not in name and "torgb" not in name:
          p[0] = 400.0
      if name.endswith("torgb.weight"):
        p.mul_(0.02)


def _pixels(img: np.ndarray, name: str, out: dict):
  if img.shape[-1] <= 32:
    out[name] = img
    return
  n, c, h, w = img.shape
  idx = np.random.RandomState(7).choice(h * w, 1024, replace=False)
  out[name + "_idx"] = idx
  out[name + "_px"] = img.reshape(n, c, h * w)[:, :, idx]
  out[name + "_blocks"] = img.reshape(n, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))


def _pkg_resources_shim():
  """stylegan3's conv2d_gradfix imports pkg_resources.parse_version (gone with new setuptools)."""
  try:
    import pkg_resources  # noqa: F401
  except ImportError:
    import types
    from packaging.version import parse
    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)


def build(name: str):
  """Runs inside a process whose sys.path holds the configuration's NVIDIA repository."""
  import torch
  _pkg_resources_shim()
  from torch_utils import persistence
  repo, res, dim, n_map, syn, dkw, extra = CONFIGS[name]
  nets = __import__("training.networks" if repo == "ada" else "training.networks_stylegan2",
                    fromlist=["x"])
  torch.manual_seed(sum(map(ord, name)))
  G = nets.Generator(z_dim=dim, c_dim=0, w_dim=dim, img_resolution=res, img_channels=3,
                     mapping_kwargs=dict(num_layers=n_map),
                     **({"synthesis_kwargs": syn} if repo == "ada" else syn))
  D = nets.Discriminator(c_dim=0, img_resolution=res, img_channels=3, **dkw)
  with torch.no_grad():  # trained-looking scalars: noise strengths and w_avg nonzero
    for m in G.modules():
      if hasattr(m, "noise_strength"):
        m.noise_strength.copy_(torch.randn([]) * 0.3)
    G.mapping.w_avg.copy_(torch.randn([dim]) * 0.5)
  if extra.get("big_bias"):
    _push_biases(G, D)
  augment = None
  if extra.get("augment"):
    from training.augment import AugmentPipe
    augment = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                          brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
  G_ema = copy.deepcopy(G).eval()
  snap = _snapshot(G, D, G_ema, augment, shared_g=extra.get("shared_g", False))
  _set_placeholder_source(persistence)  # after the deep copies (they pickle through the source)
  with open(os.path.join(HERE, f"{name}.pkl"), "wb") as f:
    pickle.dump(snap, f)
  golden = _golden(snap, dim, res)
  np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **golden.pop("arrays"))
  with open(os.path.join(HERE, f"{name}.json"), "w") as f:
    json.dump(dict(repo=repo, resolution=res, dim=dim, mapping_layers=n_map, synthesis=syn, d=dkw,
                   extra=extra, batch=BATCH, psis=PSIS, **golden), f, indent=2, sort_keys=True)
    f.write("\n")


def d_input(res: int) -> np.ndarray:
  """The images D is evaluated on (the test rebuilds them the same way)."""
  return np.random.RandomState(1).standard_normal((BATCH, 3, res, res)).astype(np.float32)


def _golden(snap, dim, res) -> dict:
  import torch
  G, D = snap["G_ema"], snap["D"]
  z = np.random.RandomState(0).standard_normal((BATCH, dim)).astype(np.float32)
  arrays, fp16 = {"z": z}, {}
  with torch.no_grad():
    for psi in PSIS:
      img = G(torch.from_numpy(z), None, truncation_psi=psi, noise_mode="const",
              force_fp32=True).numpy()
      half = G(torch.from_numpy(z), None, truncation_psi=psi, noise_mode="const").numpy()
      fp16[f"img_psi{psi}"] = float(np.abs(half - img).max())
      _pixels(img, f"img_psi{psi}", arrays)
    x = torch.from_numpy(d_input(res))
    arrays["d_logits"] = D(x, None, force_fp32=True).numpy()
    fp16["d_logits"] = float(np.abs(D(x, None).numpy() - arrays["d_logits"]).max())
  return dict(arrays=arrays, fp16_vs_fp32_max_abs=fp16)


def build_refused(kind: str):
  """cond_g.pkl (ada repo, c_dim 2) or sg3_t.pkl (stylegan3 repo, StyleGAN3-T)."""
  import torch
  _pkg_resources_shim()
  from torch_utils import persistence
  torch.manual_seed(0)
  if kind == "cond_g":
    from training import networks
    G = networks.Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=32, channel_max=4))
  else:
    from training import networks_stylegan3
    G = networks_stylegan3.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                     mapping_kwargs=dict(num_layers=1), channel_base=64,
                                     channel_max=4, num_layers=2, num_critical=1, margin_size=2)
  snap = dict(G_ema=copy.deepcopy(G).eval().requires_grad_(False).cpu())
  _set_placeholder_source(persistence)
  with open(os.path.join(HERE, f"{kind}.pkl"), "wb") as f:
    pickle.dump(snap, f)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ada", required=True, help="a clone of NVlabs/stylegan2-ada-pytorch")
  p.add_argument("--sg3", required=True, help="a clone of NVlabs/stylegan3")
  p.add_argument("--_build", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._build:  # pylint: disable=protected-access
    sys.path.insert(0, args.ada if args._build.startswith(("ada", "cond")) else args.sg3)
    (build_refused if args._build in ("cond_g", "sg3_t") else build)(args._build)
    return
  for name in list(CONFIGS) + ["cond_g", "sg3_t"]:
    print("building", name, flush=True)
    subprocess.run([sys.executable, __file__, f"--ada={args.ada}", f"--sg3={args.sg3}",
                    f"--_build={name}"], check=True)


if __name__ == "__main__":
  main()
