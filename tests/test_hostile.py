"""Hostile inputs and faults, across every CLI: no tracebacks, no silent garbage, nothing lost.

Each case runs one CLI as a subprocess (tests/test_layout.py) and asserts
- the exit status (2 for a refused input, 0 for the few cases that must succeed regardless);
- for a refusal, exactly one `prog: error:` line on stderr naming what is wrong, and no
  "Traceback" anywhere on stderr;
- that the files the case guards (`keep`) are byte-identical before and after, that the outputs
  the case forbids (`absent`) do not exist, and that no temporary files (`.name.tmp-*`,
  `incomplete.*`, `*.tmpPID`, Orbax's `*.orbax-checkpoint-tmp`) are left in the case's folder.

Faults of the machine run for real, as root too (CI runs as root):
- read-only destinations (`readonly=True`): a chmod 0555 folder, and, when the tests run as root,
  the CLI runs without CAP_DAC_OVERRIDE (`setpriv --bounding-set=-dac_override,...`), so the
  permission bits bind it as they bind any user;
- a full disk (`disk_kib=K`): a tmpfs of K KiB mounted at {tmp}/full when the tests may mount
  (root), else `ulimit -f K` (writes beyond K KiB fail with EFBIG); `DISK_FULL` records which;
- no PyTorch (`no_torch=True`): a `torch` package that fails to import comes first on PYTHONPATH;
  `hide=(...)` does the same for other packages (e.g. jax2onnx, which CI does not install anyway).
Every error line must fit in errors.MAX_LINE characters once the case's folders are shown as
16-character paths (a user's paths are the user's; the rest of the line is ours).

Almost every case fails in its validation phase, before any jit compile, so one case costs about
one absl + jax import. All selected cases are started together by one module fixture and run
three at a time; each test then checks its own case. The world is made in-process once: the
committed 64 px generator re-saved (so that its files carry checksums), a second generator of the
same architecture with other weights, an alpha export made for that second one, a 16 px segmenter
export with random weights and a tiny 64 px l4f_shapes dataset; the cases that compute before
they fail (full disks) use the 16 px world of tests/tiny_world.py (generator, alpha, dataset).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from l4f_jax.errors import MAX_LINE
from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_alpha_dir, make_dataset, make_generator_dir

ASSET = os.path.join(ROOT, "experiments", "assets", "shapes64")
MASKS = os.path.join(ROOT, "tests", "data", "l4f_custom_masks")
WORKERS = 3
TIMEOUT = 420
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]
DISK_FULL = {}  # case name -> "tmpfs" or "ulimit -f"

# ------------------------------------------------------------------------------------------------
# The world (in-process, once per module)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Paths: gen (64 px, checksummed), other (same architecture, other weights), alpha_other (an
  alpha export made for `other`), seg (16 px segmenter export), data64 (8 l4f_shapes images);
  gen16, alpha16, data16: the 16 px world of tests/tiny_world.py, for the cases that compute."""
  import jax
  from l4f_jax.config import to_dict
  from l4f_jax.datasets.shapes import prepare_shapes
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.system import training, weights
  from l4f_jax.models.unet import SegmenterArch
  from l4f_jax.system.weights import SEGMENTER_KIND as KIND

  root = tmp_path_factory.mktemp("hostile_world")
  config, trees = weights.load_weights(ASSET)
  config = {k: v for k, v in config.items() if k not in ("format", "version", "contents",
                                                         weights.CHECKSUMS)}
  gen = weights.save_weights(str(root / "gen"), config, trees)
  leaves, treedef = jax.tree.flatten(trees["g_ema"])
  rng = np.random.default_rng(0)
  shifted = jax.tree.unflatten(treedef, [np.asarray(x) + 0.01 * rng.standard_normal(x.shape)
                                         .astype(np.float32) for x in leaves])
  other = weights.save_weights(str(root / "other"), config, {"g_ema": shifted})
  loaded = weights.load_generator(other)
  a_params = training.init_alpha(AlphaNetwork(loaded.size), loaded.module, jax.random.key(0))
  alpha_other = weights.save_weights(str(root / "alpha_other"), {
      "size": loaded.size, "kind": "labels4free_alpha", **loaded.alpha_identity()},
      {"alpha": a_params})
  arch = SegmenterArch(width=4, depth=2, blocks=1, max_width=8)
  shapes = jax.eval_shape(arch.module().init, jax.random.key(0), np.zeros((1, 16, 16, 3),
                                                                          np.float32))["params"]
  seg_params = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32),
                            shapes)
  seg = weights.save_weights(str(root / "seg"), {"kind": KIND, "size": 16, "arch": to_dict(arch),
                                                 "threshold": 0.5}, {"segmenter": seg_params})
  data64 = prepare_shapes(str(root / "data"), size=64, num_examples=8)
  gen16 = make_generator_dir(str(root / "gen16"), size=16)
  return {"gen": gen, "other": other, "alpha_other": alpha_other, "seg": seg, "data64": data64,
          "gen16": gen16, "alpha16": make_alpha_dir(str(root / "alpha16"), gen16),
          "data16": make_dataset(str(root / "data16"), size=16, num_examples=8),
          "asset": ASSET, "masks": MASKS}


# ------------------------------------------------------------------------------------------------
# Setup helpers: each takes the case folder and the world, may return a reason to skip.


def _copy_weights(src_key: str, dst: str):
  def setup(tmp, w):
    shutil.copytree(w[src_key], os.path.join(tmp, dst))
  return setup


def _largest_state_file(weight_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(weight_dir, "state"))
           for f in fs]
  return max(files, key=os.path.getsize)


def _artifact(dst: str, truncate: bool = False, **meta):
  """An artifact of the world's segmenter at <tmp>/<dst>, with model.json fields replaced by
  `meta` (e.g. another jax version) or its model.jax cut short."""
  def setup(tmp, w):
    from l4f_jax.system import artifact, weights
    out = os.path.join(tmp, dst)
    artifact.export_segmenter(weights.load_segmenter(w["seg"]), out)
    path = os.path.join(out, "model.json")
    with open(path) as f:
      data = json.load(f)
    data.update(meta)
    with open(path, "w") as f:
      json.dump(data, f)
    if truncate:
      blob = os.path.join(out, "model.jax")
      os.truncate(blob, os.path.getsize(blob) // 2)
  return setup


def _damaged(kind: str, src_key: str = "gen"):
  """A copy of a weight directory at <tmp>/bad whose largest data file is truncated or has one
  bit flipped in the middle (Orbax would load the latter as silently different weights)."""
  def setup(tmp, w):
    d = os.path.join(tmp, "bad")
    shutil.copytree(w[src_key], d)
    path = _largest_state_file(d)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if kind == "truncate":
        f.truncate(size // 2)
      else:
        f.seek(size // 2)
        byte = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([byte ^ 0x08]))
  return setup


def _readonly_dir(rel: str):
  """A 0555 folder (the case runs with readonly=True, so that it binds root too)."""
  def setup(tmp, w):
    d = os.path.join(tmp, rel)
    os.makedirs(d)
    os.chmod(d, 0o555)
  return setup


def _file(rel: str, content: bytes = b"not a directory\n"):
  def setup(tmp, w):
    path = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(content)
  return setup


def _foreign_run(rel: str, program: str):
  """A run directory of another program (flags.json + a checkpoint-like folder)."""
  def setup(tmp, w):
    d = os.path.join(tmp, rel)
    os.makedirs(os.path.join(d, "checkpoints", "10"))
    with open(os.path.join(d, "flags.json"), "w") as f:
      json.dump({"program": program, "config": {}}, f)
    with open(os.path.join(d, "checkpoints", "10", "state"), "wb") as f:
      f.write(os.urandom(256))
  return setup


def _alpha_export_only(rel: str):
  """A folder holding only an alpha/ export (what a finished run leaves, without flags.json)."""
  def setup(tmp, w):
    shutil.copytree(w["alpha_other"], os.path.join(tmp, rel, "alpha"))
  return setup


def _masks(rel: str, values=(0, 255), n: int = 3, size: int = 8, seed: int = 0):
  """n PNG masks (L mode) whose pixels take `values` (fg = the last value)."""
  def setup(tmp, w):
    d = os.path.join(tmp, rel)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
      m = rng.random((size, size)) < 0.4
      Image.fromarray(np.where(m, values[-1], values[0]).astype(np.uint8), "L").save(
          os.path.join(d, f"{i}.png"))
  return setup


def _both(*setups):
  def setup(tmp, w):
    for s in setups:
      reason = s(tmp, w)
      if reason:
        return reason
  return setup


def _class_root(rel: str, gt_setup, pred_setup):
  """--masks root <tmp>/<rel> with one class folder 'Cats' holding Mask_gt / Mask_pred."""
  return _both(gt_setup(f"{rel}/Cats/Mask_gt"), pred_setup(f"{rel}/Cats/Mask_pred"))


def _images(rel: str, kinds: tuple):
  """Images at <tmp>/<rel>: 'rgb' (good 20x24 RGB), 'text' (a text file named .png),
  'truncated' (a PNG cut in half), 'grey16' (16-bit PNG at 32768), 'float' (float32 TIFF at
  0.25)."""
  def setup(tmp, w):
    d = os.path.join(tmp, rel)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1)
    for i, kind in enumerate(kinds):
      if kind == "rgb":
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            os.path.join(d, f"{i}_rgb.png"))
      elif kind == "text":
        with open(os.path.join(d, f"{i}_text.png"), "w") as f:
          f.write("this is not a picture\n")
      elif kind == "truncated":
        path = os.path.join(d, f"{i}_truncated.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
      elif kind == "grey16":
        Image.fromarray(np.full((20, 20), 32768, np.uint16)).save(os.path.join(d, f"{i}_g16.png"))
      elif kind == "float":
        Image.fromarray(np.full((20, 20), 0.25, np.float32), "F").save(
            os.path.join(d, f"{i}_float.tif"))
  return setup


def _inversion(rel: str, photo: str, recorded_size=(20, 24)):
  """What experiments.invert leaves at <tmp>/<rel> for one photo 0_rgb: a w latent of the world's
  64 px generator (style_dim 128) and metrics.json recording the photo <tmp>/<photo> and its
  size [h, w]."""
  def setup(tmp, w):
    d = os.path.join(tmp, rel)
    os.makedirs(os.path.join(d, "latents"))
    np.save(os.path.join(d, "latents", "0_rgb.npy"), np.zeros(128, np.float32))
    with open(os.path.join(d, "metrics.json"), "w") as f:
      json.dump({"sources": {"0_rgb": {"file": os.path.join(tmp, photo),
                                       "size": list(recorded_size)}}}, f)
  return setup


def _prepared(rel_src: str, data_dir: str, name: str, kinds=("rgb", "rgb")):
  """An image folder <tmp>/<rel_src> already prepared as --name at 8 px under <tmp>/<data_dir>."""
  def setup(tmp, w):
    from l4f_jax.datasets.image_folder import prepare_image_folder
    _images(rel_src, kinds)(tmp, w)
    prepare_image_folder(os.path.join(tmp, rel_src), os.path.join(tmp, data_dir), name, 8)
  return setup


def _rosinality_file(rel: str):
  """A tiny 32 px rosinality checkpoint (g_ema, g, d, latent_avg)."""
  def setup(tmp, w):
    pytest.importorskip("torch")
    from l4f_jax.reference import torch_stylegan2
    torch_stylegan2.make_rosinality_checkpoint(os.path.join(tmp, rel), 32, channel_base=512,
                                               channel_max=16, style_dim=16, n_mlp=2)
  return setup


NVIDIA = os.path.join(ROOT, "tests", "data", "nvidia")


def _nvidia_file(rel: str, fixture: str, truncate: bool = False):
  """A committed NVIDIA snapshot fixture at <tmp>/<rel> (cut to its first half when asked)."""
  def setup(tmp, w):
    with open(os.path.join(NVIDIA, f"{fixture}.pkl"), "rb") as f:
      data = f.read()
    _file(rel, data[:len(data) // 2] if truncate else data)(tmp, w)
  return setup


def _torch_file(rel: str, truncate: bool):
  def setup(tmp, w):
    torch = pytest.importorskip("torch")
    path = os.path.join(tmp, rel)
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}}, path)
    if truncate:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  return setup


def _weights_with(src_key: str, dst: str, fn):
  """A copy of a world weight directory whose trees are mapped by `fn` (e.g. NaN or huge values),
  written as a writer without the finiteness check would (an older version, another tool)."""
  def setup(tmp, w):
    from unittest import mock
    from l4f_jax.system import weights
    config, trees = weights.load_weights(w[src_key])
    config = {k: v for k, v in config.items() if k not in ("format", "version", "contents",
                                                           weights.CHECKSUMS)}
    import jax
    trees = jax.tree.map(lambda x: fn(np.asarray(x)), trees)
    with mock.patch.object(weights, "nonfinite_leaves", lambda t: []):
      weights.save_weights(os.path.join(tmp, dst), config, trees)
  return setup


_NAN = lambda x: np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.floating) else x


def _nan_rosinality_file(rel: str):
  """A tiny rosinality checkpoint whose first conv weight of g_ema holds a NaN."""
  def setup(tmp, w):
    torch = pytest.importorskip("torch")
    _rosinality_file(rel)(tmp, w)
    path = os.path.join(tmp, rel)
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["g_ema"] if k.endswith("conv.weight"))
    ckpt["g_ema"][key].view(-1)[0] = float("nan")
    torch.save(ckpt, path)
  return setup


_HELD = []  # sockets that stay open until the cases ran (a port in use)


def _occupied_port(flagfile: str):
  """A port that a socket of this process listens on, passed to the case as --port in
  <tmp>/<flagfile>."""
  def setup(tmp, w):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    _HELD.append(s)
    with open(os.path.join(tmp, flagfile), "w") as f:
      f.write(f"--port={s.getsockname()[1]}\n")
  return setup


def _symlink_loop(rel: str):
  """<tmp>/<rel> holding one image and `loop -> .`."""
  def setup(tmp, w):
    _images(rel, ("rgb",))(tmp, w)
    os.symlink(".", os.path.join(tmp, rel, "loop"))
  return setup


def _real_test_split(rel: str, size: int):
  def setup(tmp, w):
    from l4f_jax.datasets.shapes import export_real_test_split
    export_real_test_split(os.path.join(tmp, rel), size=size, n=2)
  return setup


def _check_symlink_loop(o):
  names = sorted(_dataset_pixels(o.tmp, "data", "loop"))
  assert names == ["0_rgb.png"], names  # the loop is walked once


# ------------------------------------------------------------------------------------------------
# Checks of the cases that must succeed


def _dataset_pixels(tmp, data_dir, name):
  from l4f_jax.system.data import open_dataset
  source, _ = open_dataset(os.path.join(tmp, data_dir, name))
  return {str(source[i]["filename"], "utf-8") if isinstance(source[i]["filename"], bytes)
          else str(source[i]["filename"]): np.asarray(source[i]["image"])
          for i in range(len(source))}


def _check_grey16(o):
  pixels = _dataset_pixels(o.tmp, "data", "g16")
  img = pixels["0_g16.png"]
  assert np.all(np.abs(img.astype(int) - 128) <= 1), (img.min(), img.max())  # not all-white


def _check_float(o):
  img = _dataset_pixels(o.tmp, "data", "flt")["0_float.tif"]
  assert np.all(np.abs(img.astype(int) - 64) <= 1), (img.min(), img.max())  # not all-black


def _check_rebuilt(o):
  names = sorted(_dataset_pixels(o.tmp, "data", "toy"))
  assert names == ["0_g16.png"], names  # the new source's only image


def _check_segment(o):
  out = os.path.join(o.tmp, "out")
  with open(os.path.join(out, "segment.json")) as f:
    summary = json.load(f)
  assert summary["segmented"] == 2 and summary["skipped"] == 1, summary
  assert os.path.basename(summary["skipped_files"][0]["file"]) == "1_text.png", summary
  assert sorted(os.listdir(os.path.join(out, "masks"))) == ["0_rgb.png", "2_rgb.png"]
  for name in ("0_rgb", "2_rgb"):
    with Image.open(os.path.join(out, "masks", f"{name}.png")) as m:
      assert m.size == (24, 20)  # written at the input's own size


# ------------------------------------------------------------------------------------------------
# The cases


@dataclasses.dataclass(frozen=True)
class Case:
  """One CLI run. Templates in args/keep/absent: {tmp} (the case's folder) and the world keys."""
  prog: str
  args: tuple
  code: int = 2
  says: tuple = ()          # substrings of the error line (code 2) or of stdout (code 0)
  keep: tuple = ()          # paths that must be byte-identical afterwards
  absent: tuple = ()        # paths that must not exist afterwards
  setup: Optional[Callable] = None
  check: Optional[Callable] = None
  fsize_kib: int = 0        # `ulimit -f`: writes beyond it fail with EFBIG (a full disk)
  disk_kib: int = 0         # {tmp}/full holds this many KiB (tmpfs, else ulimit -f)
  readonly: bool = False    # run without CAP_DAC_OVERRIDE when root
  no_torch: bool = False    # torch fails to import
  hide: tuple = ()          # further packages that fail to import
  xfail: str = ""           # reason, for cases that wait for a fix outside this module's reach


GEN = ("--generator={gen}",)
TRAIN = ("--generator={gen}", "--dataset={data64}", "--batch=1", "--iter=2")
GAN = ("--dataset={data64}", "--batch=1", "--iters=2", "--style_dim=8", "--n_mlp=1",
       "--channel_max=8")
TRAIN16 = ("--generator={gen16}", "--dataset={data16}") + TRAIN[2:]
GAN16 = ("--dataset={data16}",) + GAN[1:]
PIPE = ("--generator={gen}", "--dataset={data64}", "--batch=1", "--iter=2",
        "--real_test={tmp}/real", "--real_test_n=2")
CASES = {
    # -------------------------------------------------------------- cases that compile (first)
    "segment_skips_an_unreadable_image_among_good_ones": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out", "--batch=2"),
        code=0, says=("segmented 2 image(s), skipped 1", "1_text.png"),
        setup=_images("imgs", ("rgb", "text", "rgb")), check=_check_segment, keep=("{tmp}/imgs",)),
    # -------------------------------------------------------------- train (Labels4Free)
    "train_lr_nan": Case("train", TRAIN + ("--workdir={tmp}/run", "--lr=nan"),
                         says=("--lr=nan must be a finite number",), absent=("{tmp}/run",)),
    "train_profile_steps_reversed": Case("train", TRAIN + ("--workdir={tmp}/run",
                                                           "--profile_steps=5:2"),
                                         says=("--profile_steps=",), absent=("{tmp}/run",)),
    "train_positional_argument": Case("train", TRAIN + ("--workdir={tmp}/run", "resume"),
                                      says=("unexpected arguments ['resume']",),
                                      absent=("{tmp}/run",)),
    "train_unknown_flag": Case("train", TRAIN + ("--workdir={tmp}/run", "--learning_rate=1"),
                               says=("learning_rate",), absent=("{tmp}/run",)),
    "train_workdir_of_another_program": Case(
        "train", TRAIN + ("--workdir={tmp}/run",), says=("holds a pretrain_gan run",),
        setup=_foreign_run("run", "pretrain_gan"), keep=("{tmp}/run",)),
    "train_workdir_holding_an_alpha_export": Case(
        "train", TRAIN + ("--workdir={tmp}/run", "--overwrite"),
        says=("files that are not a run of this program",), setup=_alpha_export_only("run"),
        keep=("{tmp}/run",)),
    "train_workdir_is_a_file": Case("train", TRAIN + ("--workdir={tmp}/run",),
                                    says=("--workdir=", "is a file"), setup=_file("run"),
                                    keep=("{tmp}/run",)),
    "train_workdir_read_only": Case("train", TRAIN + ("--workdir={tmp}/ro/run",),
                                    says=("not writable",), setup=_readonly_dir("ro"), readonly=True,
                                    keep=("{tmp}/ro",)),
    "train_generator_truncated": Case(
        "train", ("--generator={tmp}/bad",) + TRAIN[1:] + ("--workdir={tmp}/run",),
        says=("--generator=", "is damaged", "truncated"), setup=_damaged("truncate"),
        keep=("{tmp}/bad",), absent=("{tmp}/run",)),
    "train_generator_bit_flipped": Case(
        "train", ("--generator={tmp}/bad",) + TRAIN[1:] + ("--workdir={tmp}/run",),
        says=("--generator=", "is damaged"), setup=_damaged("flip"), keep=("{tmp}/bad",),
        absent=("{tmp}/run",)),
    "train_generator_config_garbage": Case(
        "train", ("--generator={tmp}/bad",) + TRAIN[1:] + ("--workdir={tmp}/run",),
        says=("config.json is unreadable",),
        setup=_both(_copy_weights("gen", "bad"), _file("bad/config.json", b"{\"size\": 6")),
        keep=("{tmp}/bad",), absent=("{tmp}/run",)),
    "train_generator_is_an_alpha_export": Case(
        "train", ("--generator={alpha_other}",) + TRAIN[1:] + ("--workdir={tmp}/run",),
        says=("--generator=",), keep=("{alpha_other}",), absent=("{tmp}/run",)),
    "train_dataset_missing": Case("train", TRAIN[:1] + ("--dataset={tmp}/nope", "--batch=1",
                                                        "--workdir={tmp}/run"),
                                  says=("--dataset=", "prepare_data"), absent=("{tmp}/run",)),
    # -------------------------------------------------------------- pretrain_gan
    "pretrain_gan_iters_negative": Case("pretrain_gan", GAN + ("--workdir={tmp}/run",
                                                               "--iters=-3"),
                                        says=("--iters=-3 must be >= 1",), absent=("{tmp}/run",)),
    "pretrain_gan_export_onto_a_weight_dir": Case(
        "pretrain_gan", GAN + ("--workdir={tmp}/run", "--export={tmp}/weights"),
        says=("--export=", "already exists", "--overwrite"),
        setup=_copy_weights("gen", "weights"), keep=("{tmp}/weights",), absent=("{tmp}/run",)),
    "pretrain_gan_export_is_a_file": Case(
        "pretrain_gan", GAN + ("--workdir={tmp}/run", "--export={tmp}/w", "--overwrite"),
        says=("--export=", "is a file"), setup=_file("w"), keep=("{tmp}/w",),
        absent=("{tmp}/run",)),
    "pretrain_gan_workdir_of_another_program": Case(
        "pretrain_gan", GAN + ("--workdir={tmp}/run",), says=("holds a labels4free run",),
        setup=_foreign_run("run", "labels4free"), keep=("{tmp}/run",)),
    "pretrain_gan_lr_inf": Case("pretrain_gan", GAN + ("--workdir={tmp}/run", "--lr=inf"),
                                says=("--lr=inf must be a finite number",),
                                absent=("{tmp}/run",)),
    # -------------------------------------------------------------- convert
    "convert_text_file_as_pt": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"), says=("not a PyTorch checkpoint",),
        setup=_file("model.pt", b"hello, I am text\n"), keep=("{tmp}/model.pt",),
        absent=("{tmp}/w",)),
    "convert_truncated_pt": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"), says=("not a PyTorch checkpoint",),
        setup=_torch_file("model.pt", truncate=True), keep=("{tmp}/model.pt",),
        absent=("{tmp}/w",)),
    "convert_dst_is_an_existing_weight_dir": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"), says=("already exists",
                                                                    "--overwrite"),
        setup=_both(_file("model.pt", b"x"), _copy_weights("gen", "w")), keep=("{tmp}/w",)),
    "convert_disk_full": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"),
        says=("the file is too large", "[Errno 27]"), setup=_rosinality_file("model.pt"),
        fsize_kib=16, keep=("{tmp}/model.pt",), absent=("{tmp}/w",)),
    "convert_src_is_a_directory": Case("convert", ("--src={tmp}", "--dst={tmp}/w"),
                                       says=("is a directory",), absent=("{tmp}/w",)),
    "convert_missing_flags": Case("convert", ("--dst={tmp}/w",), says=("--src is required",),
                                  absent=("{tmp}/w",)),
    # -------------------------------------------------------------- prepare_data
    "prepare_data_16_bit_greyscale_png": Case(
        "prepare_data", ("--src={tmp}/src", "--name=g16", "--size=8", "--data_dir={tmp}/data"),
        code=0, says=("1 images written",), setup=_images("src", ("grey16",)),
        check=_check_grey16, keep=("{tmp}/src",)),
    "prepare_data_float_tiff": Case(
        "prepare_data", ("--src={tmp}/src", "--name=flt", "--size=8", "--data_dir={tmp}/data"),
        code=0, says=("1 images written",), setup=_images("src", ("float",)),
        check=_check_float, keep=("{tmp}/src",)),
    "prepare_data_same_name_other_src": Case(
        "prepare_data", ("--src={tmp}/src2", "--name=toy", "--size=8", "--data_dir={tmp}/data"),
        says=("--name", "was prepared from --src=", "--overwrite"),
        setup=_both(_prepared("src", "data", "toy"), _images("src2", ("grey16",))),
        keep=("{tmp}/data", "{tmp}/src2")),
    "prepare_data_same_src_changed_files": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=8", "--data_dir={tmp}/data"),
        says=("its files changed", "--overwrite"),
        setup=_both(_prepared("src", "data", "toy"), _images("src", ("rgb", "rgb", "float"))),
        keep=("{tmp}/data",)),
    "prepare_data_same_src_is_reused": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=8", "--data_dir={tmp}/data"),
        code=0, says=("already prepared",), setup=_prepared("src", "data", "toy"),
        keep=("{tmp}/data",)),
    "prepare_data_overwrite_rebuilds_from_the_new_src": Case(
        "prepare_data", ("--src={tmp}/src2", "--name=toy", "--size=8", "--data_dir={tmp}/data",
                         "--overwrite"),
        code=0, says=("1 images written",),
        setup=_both(_prepared("src", "data", "toy"), _images("src2", ("grey16",))),
        check=_check_rebuilt),
    "prepare_data_only_unreadable_files": Case(
        "prepare_data", ("--src={tmp}/src", "--name=bad", "--size=8", "--data_dir={tmp}/data"),
        says=("none of the 2 image files could be read",),
        setup=_images("src", ("text", "truncated")), keep=("{tmp}/src",),
        absent=("{tmp}/data/bad/8px",)),
    "prepare_data_bad_name": Case("prepare_data", ("--src={tmp}/src", "--name=My-Data",
                                                   "--size=8", "--data_dir={tmp}/data"),
                                  says=("--name='My-Data'",), setup=_images("src", ("rgb",)),
                                  absent=("{tmp}/data",)),
    "prepare_data_data_dir_is_a_file": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=8", "--data_dir={tmp}/data"),
        says=("--data_dir=", "is a file"), setup=_both(_images("src", ("rgb",)), _file("data")),
        keep=("{tmp}/data",)),
    "prepare_data_missing_size": Case("prepare_data", ("--src={tmp}/src", "--name=toy",
                                                       "--data_dir={tmp}/data"),
                                      says=("--size is required",), absent=("{tmp}/data",)),
    "prepare_data_malformed_flag_value": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=big", "--data_dir={tmp}/data"),
        says=("--size", "big"), absent=("{tmp}/data",)),
    "prepare_data_disk_full": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=64", "--data_dir={tmp}/data"),
        says=("too large", "[Errno 27]"), setup=_images("src", ("rgb",) * 12), fsize_kib=8,
        keep=("{tmp}/src",), absent=("{tmp}/data/toy/64px/1.0.0/dataset_info.json",)),
    # -------------------------------------------------------------- sample
    "sample_threshold_2": Case("sample", GEN + ("--out={tmp}/out", "--threshold=2"),
                               says=("--threshold=2.0 must be <= 1",), absent=("{tmp}/out",)),
    "sample_into_an_existing_out": Case(
        "sample", GEN + ("--out={tmp}/out",), says=("--out=", "already holds", "--overwrite"),
        setup=_file("out/images.png", b"an earlier grid"), keep=("{tmp}/out",)),
    "sample_out_read_only": Case("sample", GEN + ("--out={tmp}/ro/out",),
                                 says=("not writable",), setup=_readonly_dir("ro"), readonly=True,
                                 keep=("{tmp}/ro",)),
    "sample_generator_bit_flipped": Case(
        "sample", ("--generator={tmp}/bad", "--out={tmp}/out"), says=("is damaged",),
        setup=_damaged("flip", "other"), keep=("{tmp}/bad",), absent=("{tmp}/out",)),
    "sample_generator_without_checksums_truncated": Case(
        "sample", ("--generator={tmp}/bad", "--out={tmp}/out"), says=("cannot restore",),
        setup=_damaged("truncate", "asset"), keep=("{tmp}/bad",), absent=("{tmp}/out",)),
    "sample_alpha_of_another_generator_same_size": Case(
        "sample", GEN + ("--alpha={alpha_other}", "--out={tmp}/out"),
        says=("--alpha=", "other weights"), keep=("{alpha_other}",), absent=("{tmp}/out",)),
    "sample_missing_generator": Case("sample", ("--out={tmp}/out",),
                                     says=("--generator is required",), absent=("{tmp}/out",)),
    "sample_unknown_flag": Case("sample", GEN + ("--out={tmp}/out", "--samples=4"),
                                says=("samples",), absent=("{tmp}/out",)),
    # -------------------------------------------------------------- evaluate
    "evaluate_threshold_2": Case("evaluate", GEN + ("--alpha={alpha_other}", "--threshold=2"),
                                 says=("--threshold=2.0 must be <= 1",)),
    "evaluate_corrupt_png_in_gt_dir": Case(
        "evaluate", ("--gt_dir={tmp}/gt", "--pred_dir={tmp}/pred"),
        says=("2.png", "unreadable mask"),
        setup=_both(_masks("gt"), _masks("pred", seed=1), _file("gt/2.png", b"\x89PNG garbage")),
        keep=("{tmp}/gt", "{tmp}/pred")),
    "evaluate_truncated_png_in_masks_root": Case(
        "evaluate", ("--masks={tmp}/root", "--out={tmp}/out"),
        says=("--masks=", "(Cats)", "0_truncated.png", "unreadable mask"),
        setup=_both(_class_root("root", _masks, _masks),
                    _images("root/Cats/Mask_pred", ("truncated",))),
        keep=("{tmp}/root",), absent=("{tmp}/out/metrics.json",)),
    "evaluate_zero_one_masks_in_gt_and_pred_dirs": Case(
        "evaluate", ("--gt_dir={tmp}/gt", "--pred_dir={tmp}/pred"),
        says=("--gt_dir=", "only the values 0 and 1", "0/255"),
        setup=_both(_masks("gt", (0, 1)), _masks("pred", (0, 1), seed=1)),
        keep=("{tmp}/gt", "{tmp}/pred")),
    "evaluate_zero_one_predictions_in_masks_root": Case(
        "evaluate", ("--masks={tmp}/root",), says=("(Cats)", "Mask_pred", "0 and 1"),
        setup=_class_root("root", _masks, lambda rel: _masks(rel, (0, 1), seed=1)),
        keep=("{tmp}/root",)),
    "evaluate_mask_counts_differ": Case(
        "evaluate", ("--gt_dir={tmp}/gt", "--pred_dir={tmp}/pred"), says=("natural sort",),
        setup=_both(_masks("gt", n=3), _masks("pred", n=2))),
    "evaluate_no_source": Case("evaluate", ("--out={tmp}/out",), says=("pass exactly one of",),
                               absent=("{tmp}/out",)),
    "evaluate_out_is_a_file": Case("evaluate", ("--masks={masks}", "--out={tmp}/out"),
                                   says=("--out=", "is a file"), setup=_file("out"),
                                   keep=("{tmp}/out",)),
    "evaluate_disk_full_writing_metrics": Case(
        "evaluate", ("--masks={masks}", "--out={tmp}/out"), says=("too large", "writing"),
        fsize_kib=1, absent=("{tmp}/out/metrics.json",)),
    # -------------------------------------------------------------- benchmark
    "benchmark_unknown_benchmark": Case("benchmark", ("--what=everything",),
                                        says=("--what=everything is unknown",)),
    "benchmark_size_not_a_power_of_two": Case("benchmark", ("--size=100",),
                                              says=("--size=100 must be a power of two",)),
    "benchmark_torch_threads_not_integers": Case("benchmark", ("--torch_threads=two",),
                                                 says=("--torch_threads=",)),
    "benchmark_unknown_config": Case("benchmark", ("--config=tpu9000",),
                                     says=("--config=tpu9000 is unknown",)),
    "benchmark_unknown_torch_reference": Case("benchmark", ("--torch_modconv=lean",),
                                              says=("--torch_modconv", "nonfused_depthwise")),
    "benchmark_jax_variant_unknown_rule": Case(
        "benchmark", ("--what=iteration", "--jax_variants=float32,float32+WINOGRAD=1"),
        says=("--jax_variants", "'WINOGRAD' is not a conv rule", "similar: WINOGRAD_MIN_CHANNELS,",
              "CONV_RULES")),
    "benchmark_jax_variant_rule_not_an_integer": Case(
        "benchmark", ("--what=iteration", "--jax_variants=bfloat16+GEMM_MAX_PIXELS=many"),
        says=("--jax_variants", "'GEMM_MAX_PIXELS=many'", "integer")),
    "benchmark_jax_variant_winograd_tile_unsupported": Case(
        "benchmark", ("--what=iteration", "--jax_variants=float32+WINOGRAD_TILE=3"),
        says=("--jax_variants", "WINOGRAD_TILE=3 must be one of [2, 4]")),
    "benchmark_jax_variant_unknown_dtype": Case(
        "benchmark", ("--what=iteration", "--jax_variants=float16"),
        says=("--jax_variants", "'float16'", "float32, bfloat16")),
    "benchmark_jax_variants_without_iteration": Case(
        "benchmark", ("--what=generator", "--jax_variants=bfloat16"),
        says=("--jax_variants applies to --what=iteration only",)),
    "benchmark_nor1_without_iteration": Case(
        "benchmark", ("--what=generator", "--nor1"),
        says=("--nor1 applies to --what=iteration only",)),
    # -------------------------------------------------------------- make_pairs
    "make_pairs_out_is_another_dataset": Case(
        "make_pairs", GEN + ("--alpha={alpha_other}", "--out={tmp}/out", "--overwrite"),
        says=("holds files that make_pairs did not write", "notes.txt"),
        setup=_file("out/notes.txt", b"mine"), keep=("{tmp}/out",)),
    "make_pairs_out_exists": Case(
        "make_pairs", GEN + ("--alpha={alpha_other}", "--out={tmp}/out"),
        says=("holds an earlier make_pairs output", "--overwrite"),
        setup=_file("out/pairs.json", b"{}"), keep=("{tmp}/out",)),
    "make_pairs_alpha_of_another_generator": Case(
        "make_pairs", GEN + ("--alpha={alpha_other}", "--out={tmp}/out"),
        says=("--alpha=", "other weights"), absent=("{tmp}/out",)),
    "make_pairs_truncation_above_1": Case(
        "make_pairs", GEN + ("--alpha={alpha_other}", "--out={tmp}/out", "--truncation=2"),
        says=("--truncation=2.0 must be <= 1",), absent=("{tmp}/out",)),
    "make_pairs_alpha_truncated": Case(
        "make_pairs", ("--generator={other}", "--alpha={tmp}/bad", "--out={tmp}/out"),
        says=("--alpha=", "is damaged"), setup=_damaged("truncate", "alpha_other"),
        keep=("{tmp}/bad",), absent=("{tmp}/out",)),
    # -------------------------------------------------------------- train_student
    "train_student_pairs_missing": Case(
        "train_student", ("--pairs={tmp}/nope", "--workdir={tmp}/run"),
        says=("--pairs=", "experiments.make_pairs"),
        absent=("{tmp}/run",)),
    "train_student_pairs_without_alpha": Case(
        "train_student", ("--pairs={data64}", "--workdir={tmp}/run"),
        says=("holds no 'alpha' masks", "make_pairs"), absent=("{tmp}/run",)),
    "train_student_lr_inf": Case("train_student", ("--pairs={data64}", "--workdir={tmp}/run",
                                                   "--lr=inf"),
                                 says=("--lr=inf must be a finite number",),
                                 absent=("{tmp}/run",)),
    "train_student_workdir_is_a_file": Case(
        "train_student", ("--pairs={data64}", "--workdir={tmp}/run"),
        says=("--workdir=", "is a file"), setup=_file("run"), keep=("{tmp}/run",)),
    "train_student_export_is_a_weight_dir": Case(
        "train_student", ("--pairs={data64}", "--workdir={tmp}/run", "--export={tmp}/w"),
        says=("--export=", "not a segmenter export"), setup=_copy_weights("gen", "w"),
        keep=("{tmp}/w",)),
    # -------------------------------------------------------------- segment
    "segment_out_not_empty": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out", "--overwrite"),
        says=("--out=", "holds files that segment did not write", "keep.txt"),
        setup=_both(_images("imgs", ("rgb",)), _file("out/keep.txt", b"mine")),
        keep=("{tmp}/out",)),
    "segment_segmenter_is_a_generator": Case(
        "segment", ("--segmenter={gen}", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("not a segmenter export",), setup=_images("imgs", ("rgb",)),
        absent=("{tmp}/out",)),
    "segment_segmenter_bit_flipped": Case(
        "segment", ("--segmenter={tmp}/bad", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("--segmenter=", "is damaged"),
        setup=_both(_damaged("flip", "seg"), _images("imgs", ("rgb",))), keep=("{tmp}/bad",),
        absent=("{tmp}/out",)),
    "segment_images_missing": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/nope", "--out={tmp}/out"),
        says=("--images=", "no such file or folder"), absent=("{tmp}/out",)),
    "segment_threshold_2": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--threshold=2"), says=("--threshold=2.0 must be <= 1",),
        absent=("{tmp}/out",)),
    "segment_only_unreadable_images": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("--images=", "none of the 2"), setup=_images("imgs", ("text", "truncated")),
        absent=("{tmp}/out",)),
    "segment_fit_unknown": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out", "--fit=zoom"),
        says=("--fit", "zoom"), setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "segment_bgcolor_out_of_range": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--bgcolor=0,256,0"), says=("--bgcolor=0,256,0", "0..255"),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "segment_bgcolor_two_values": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--bgcolor=255,255"), says=("--bgcolor=255,255", "three integers"),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "segment_outputs_unknown": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--outputs=mask,depth"), says=("--outputs=mask,depth", "mask,alpha,cutout"),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "segment_artifact_from_another_jax": Case(
        "segment", ("--segmenter={tmp}/art", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("--segmenter=", "exported with jax 0.4.1", "export_segmenter"),
        setup=_both(_artifact("art", jax_version="0.4.1"), _images("imgs", ("rgb",))),
        keep=("{tmp}/art",), absent=("{tmp}/out",)),
    "segment_artifact_damaged": Case(
        "segment", ("--segmenter={tmp}/art", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("--segmenter=", "model.jax is missing or damaged"),
        setup=_both(_artifact("art", truncate=True), _images("imgs", ("rgb",))),
        keep=("{tmp}/art",), absent=("{tmp}/out",)),
    "segment_num_processes_alone": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--num_processes=2"), says=("--coordinator_address, --num_processes and "
                                                "--process_id go together",),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "prepare_data_validation_with_the_test_seed": Case(
        "prepare_data", ("--src=shapes_val", "--seed=0", "--num_examples=2",
                         "--data_dir={tmp}/d"),
        says=("--seed=0", "the real test split's seed"), absent=("{tmp}/d/l4f_shapes_val",)),
    "prepare_data_windows_data_dir_is_a_file": Case(
        "prepare_data", ("--src=shapes_windows", "--num_examples=2", "--data_dir={tmp}/d"),
        says=("--data_dir=", "is a file"), setup=_file("d"), keep=("{tmp}/d",)),
    # -------------------------------------------------------------- export_segmenter
    "export_segmenter_segmenter_is_a_generator": Case(
        "export_segmenter", ("--segmenter={gen}", "--out={tmp}/out"),
        says=("--segmenter=", "not a segmenter export"), absent=("{tmp}/out",)),
    "export_segmenter_out_not_empty": Case(
        "export_segmenter", ("--segmenter={seg}", "--out={tmp}/out", "--overwrite"),
        says=("--out=", "holds files that export_segmenter did not write"),
        setup=_file("out/keep.txt", b"mine"), keep=("{tmp}/out",)),
    "export_segmenter_out_is_the_segmenter": Case(
        "export_segmenter", ("--segmenter={tmp}/s", "--out={tmp}/s", "--overwrite"),
        says=("is also the input --segmenter",), setup=_copy_weights("seg", "s"),
        keep=("{tmp}/s",)),
    "export_segmenter_onnx_without_jax2onnx": Case(
        "export_segmenter", ("--segmenter={seg}", "--out={tmp}/out", "--onnx"),
        says=("--onnx needs jax2onnx", "pip install -r requirements-onnx.txt"),
        hide=("jax2onnx",), absent=("{tmp}/out",)),
    # -------------------------------------------------------------- serve
    "serve_port_in_use": Case(
        "serve", ("--segmenter={seg}", "--flagfile={tmp}/port.flags"),
        says=("--port=", "is in use", "--port=0 picks a free one"),
        setup=_occupied_port("port.flags")),
    "serve_segmenter_is_a_generator": Case(
        "serve", ("--segmenter={gen}", "--port=0"),
        says=("--segmenter=", "not a segmenter export")),
    "serve_segmenter_missing": Case(
        "serve", ("--segmenter={tmp}/nope", "--port=0"), says=("--segmenter=",)),
    "serve_artifact_of_another_jax": Case(
        "serve", ("--segmenter={tmp}/art", "--port=0"),
        says=("--segmenter=", "exported with jax 0.4.1", "export_segmenter"),
        setup=_artifact("art", jax_version="0.4.1")),
    "serve_host_not_of_this_machine": Case(
        "serve", ("--segmenter={seg}", "--host=203.0.113.7", "--port=0"),
        says=("--host=203.0.113.7", "cannot listen there")),
    "serve_port_out_of_range": Case(
        "serve", ("--segmenter={seg}", "--port=70000"), says=("--port=70000",)),
    "serve_fit_unknown": Case(
        "serve", ("--segmenter={seg}", "--fit=zoom"), says=("fit", "zoom")),
    "serve_max_upload_zero": Case(
        "serve", ("--segmenter={seg}", "--max_upload_mb=0"), says=("--max_upload_mb=0",)),
    "serve_unknown_flag": Case(
        "serve", ("--segmenter={seg}", "--workers=4"), says=("workers",)),
    "serve_positional_argument": Case(
        "serve", ("--segmenter={seg}", "start"), says=("unexpected arguments ['start']",)),
    # -------------------------------------------------------------- invert / edit
    "invert_lr_nan": Case(
        "invert", ("--generator={other}", "--alpha={alpha_other}", "--images={tmp}/imgs",
                   "--out={tmp}/out", "--lr=nan"), says=("--lr=nan must be a finite number",),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "invert_process_id_alone": Case(
        "invert", ("--generator={other}", "--alpha={alpha_other}", "--images={tmp}/imgs",
                   "--out={tmp}/out", "--process_id=1"),
        says=("--coordinator_address, --num_processes and --process_id go together",),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "invert_alpha_for_another_generator": Case(
        "invert", ("--generator={gen}", "--alpha={alpha_other}", "--images={tmp}/imgs",
                   "--out={tmp}/out"), says=("--alpha=", "trained on a generator with other"),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "invert_out_not_empty": Case(
        "invert", ("--generator={other}", "--alpha={alpha_other}", "--images={tmp}/imgs",
                   "--out={tmp}/out", "--overwrite"),
        says=("--out=", "holds files that invert did not write", "keep.txt"),
        setup=_both(_images("imgs", ("rgb",)), _file("out/keep.txt", b"mine")),
        keep=("{tmp}/out",)),
    "edit_out_not_empty": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--seeds=0",
                 "--out={tmp}/out"), says=("--out=", "holds files that edit did not write"),
        setup=_file("out/keep.txt", b"mine"), keep=("{tmp}/out",)),
    "edit_strength_nan": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--seeds=0",
                 "--out={tmp}/out", "--strength=nan"),
        says=("--strength=nan must be a finite number",), absent=("{tmp}/out",)),
    "edit_images_do_not_match_the_latents": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--latents={tmp}/inv",
                 "--images={tmp}/others", "--out={tmp}/out"),
        says=("--images=", "holds no photo named like the latent(s) 0_rgb"),
        setup=_both(_inversion("inv", "imgs/0_rgb.png"), _images("imgs", ("rgb",)),
                    _file("others/x.png", b"")), absent=("{tmp}/out",)),
    "edit_score_margin_negative": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--seeds=0",
                 "--out={tmp}/out", "--score_margin=-1"),
        says=("--score_margin=-1 must be >= 0",), absent=("{tmp}/out",)),
    "edit_segmenter_is_a_generator": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--seeds=0",
                 "--out={tmp}/out", "--segmenter={gen}"),
        says=("--segmenter=", "not a segmenter export"), absent=("{tmp}/out",)),
    "edit_photo_of_another_size_than_its_inversion": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--latents={tmp}/inv",
                 "--out={tmp}/out"),
        says=("0_rgb.png is 24x20 px but the inversion of 0_rgb recorded 32x32",),
        setup=_both(_inversion("inv", "imgs/0_rgb.png", (32, 32)), _images("imgs", ("rgb",))),
        absent=("{tmp}/out",), keep=("{tmp}/inv", "{tmp}/imgs")),
    # -------------------------------------------------------------- outputs never touch inputs
    "segment_out_is_the_images_folder": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/imgs", "--overwrite"),
        says=("--out=", "is also the input --images"), setup=_images("imgs", ("rgb", "rgb")),
        keep=("{tmp}/imgs",)),
    "segment_out_inside_the_images_folder": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/imgs/out"),
        says=("lies inside the input --images",), setup=_images("imgs", ("rgb",)),
        keep=("{tmp}/imgs",)),
    "segment_out_holds_the_images": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/out/masks", "--out={tmp}/out",
                    "--overwrite"), says=("holds the input --images",),
        setup=_both(_images("out/masks", ("rgb",)), _file("out/segment.json", b"{}")),
        keep=("{tmp}/out",)),
    "invert_out_is_the_images_folder": Case(
        "invert", ("--generator={other}", "--alpha={alpha_other}", "--images={tmp}/imgs",
                   "--out={tmp}/imgs", "--overwrite"), says=("is also the input --images",),
        setup=_images("imgs", ("rgb",)), keep=("{tmp}/imgs",)),
    "edit_out_is_the_latents": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--latents={tmp}/inv",
                 "--out={tmp}/inv", "--overwrite"), says=("is also the input --latents",),
        setup=_file("inv/latents/a.npy", b"x"), keep=("{tmp}/inv",)),
    "make_pairs_out_is_the_alpha": Case(
        "make_pairs", ("--generator={other}", "--alpha={tmp}/a", "--out={tmp}/a", "--overwrite"),
        says=("is also the input --alpha",), setup=_copy_weights("alpha_other", "a"),
        keep=("{tmp}/a",)),
    "sample_out_is_the_generator": Case(
        "sample", ("--generator={tmp}/g", "--out={tmp}/g", "--overwrite"),
        says=("is also the input --generator",), setup=_copy_weights("gen", "g"),
        keep=("{tmp}/g",)),
    "evaluate_out_is_the_gt_dir": Case(
        "evaluate", ("--gt_dir={tmp}/gt", "--pred_dir={tmp}/pred", "--out={tmp}/gt", "--overwrite"),
        says=("is also the input --gt_dir",), setup=_both(_masks("gt"), _masks("pred", seed=1)),
        keep=("{tmp}/gt", "{tmp}/pred")),
    "evaluate_out_of_the_user_with_overwrite": Case(
        "evaluate", ("--masks={masks}", "--out={tmp}/out", "--overwrite"),
        says=("holds files that evaluate did not write", "keep.txt"),
        setup=_file("out/keep.txt", b"mine"), keep=("{tmp}/out",)),
    "convert_dst_holds_the_src": Case(
        "convert", ("--src={tmp}/w/model.pt", "--dst={tmp}/w", "--overwrite"),
        says=("holds the input --src",), setup=_file("w/model.pt", b"x"), keep=("{tmp}/w",)),
    "train_workdir_holds_the_generator": Case(
        "train", ("--generator={tmp}/run/g",) + TRAIN[1:] + ("--workdir={tmp}/run", "--overwrite"),
        says=("holds the input --generator",), setup=_copy_weights("gen", "run/g"),
        keep=("{tmp}/run",)),
    "pretrain_gan_export_is_the_dataset": Case(
        "pretrain_gan", GAN + ("--workdir={tmp}/run", "--export={data64}", "--overwrite"),
        says=("--export=", "is also the input --dataset"), keep=("{data64}",),
        absent=("{tmp}/run",)),
    # -------------------------------------------------------------- non-finite weights
    "segment_segmenter_nan": Case(
        "segment", ("--segmenter={tmp}/nan", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("--segmenter=", "non-finite weights"),
        setup=_both(_weights_with("seg", "nan", _NAN), _images("imgs", ("rgb",))),
        absent=("{tmp}/out",)),
    "segment_segmenter_overflows": Case(
        "segment", ("--segmenter={tmp}/big", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("predicted non-finite masks",),
        setup=_both(_weights_with("seg", "big", lambda x: x * np.float32(1e10)),
                    _images("imgs", ("rgb",))), absent=("{tmp}/out",)),
    "sample_generator_nan": Case(
        "sample", ("--generator={tmp}/nan", "--out={tmp}/out"),
        says=("--generator=", "non-finite weights"), setup=_weights_with("other", "nan", _NAN),
        absent=("{tmp}/out",)),
    "make_pairs_alpha_nan": Case(
        "make_pairs", ("--generator={other}", "--alpha={tmp}/nan", "--out={tmp}/out"),
        says=("--alpha=", "non-finite weights"), setup=_weights_with("alpha_other", "nan", _NAN),
        absent=("{tmp}/out",)),
    "convert_nan_tensor": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"),
        says=("non-finite tensors", "g_ema/"), setup=_nan_rosinality_file("model.pt"),
        keep=("{tmp}/model.pt",), absent=("{tmp}/w",)),
    # -------------------------------------------------------------- tracebacks and wrong fixes
    "convert_dst_under_a_file": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/f/w"), says=("--dst=", "is a file"),
        setup=_both(_rosinality_file("model.pt"), _file("f")), keep=("{tmp}/f",)),
    "convert_without_torch": Case(  # the restricted reader needs no torch
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w"), code=0,
        says=("found g_ema: state_dict", "wrote"), no_torch=True,
        setup=_rosinality_file("model.pt"), keep=("{tmp}/model.pt",)),
    "convert_nvidia_snapshot_without_torch": Case(
        "convert", ("--src={tmp}/snap.pkl", "--dst={tmp}/w"), code=0,
        says=("found G_ema: Generator", "wrote"), no_torch=True,
        setup=_nvidia_file("snap.pkl", "ada_map8_32"), keep=("{tmp}/snap.pkl",)),
    "convert_tf_era_pickle": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"), says=("TensorFlow-era", "legacy.py"),
        setup=_file("net.pkl", b"cdnnlib.tflib.network\nNetwork\n)\x81}b."),
        keep=("{tmp}/net.pkl",), absent=("{tmp}/w",)),
    "convert_stylegan3_t_generator": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"), says=("StyleGAN3 (-t / -r)",),
        setup=_nvidia_file("net.pkl", "sg3_t"), keep=("{tmp}/net.pkl",), absent=("{tmp}/w",)),
    "convert_random_python_object": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"),
        says=("asks for collections.Counter",),
        setup=_file("net.pkl", pickle.dumps(collections.Counter("ab"))),
        keep=("{tmp}/net.pkl",), absent=("{tmp}/w",)),
    "convert_plain_python_list": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"), says=("holds a list",),
        setup=_file("net.pkl", pickle.dumps([1, 2])), absent=("{tmp}/w",)),
    "convert_truncated_snapshot": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"), says=("is truncated",),
        setup=_nvidia_file("net.pkl", "ada_map8_32", truncate=True), keep=("{tmp}/net.pkl",),
        absent=("{tmp}/w",)),
    "convert_pickle_asks_for_os_system": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"), says=("asks for os.system",),
        setup=_file("net.pkl", b"cos\nsystem\n(S'touch pwned'\ntR."),
        keep=("{tmp}/net.pkl",), absent=("{tmp}/w", "{tmp}/pwned", os.path.join(ROOT, "pwned"))),
    "convert_conditional_generator": Case(
        "convert", ("--src={tmp}/net.pkl", "--dst={tmp}/w"),
        says=("conditional generator (c_dim=2)", "not supported"),
        setup=_nvidia_file("net.pkl", "cond_g"), keep=("{tmp}/net.pkl",), absent=("{tmp}/w",)),
    "sample_const_noise_without_stored_noise": Case(
        "sample", ("--generator={gen}", "--out={tmp}/out", "--noise_mode=const"),
        says=("--noise_mode=const", "stores no noise maps", "--noise_mode=random"),
        absent=("{tmp}/out",)),
    "make_pairs_unknown_noise_mode": Case(
        "make_pairs", ("--generator={other}", "--alpha={alpha_other}", "--out={tmp}/out",
                       "--noise_mode=fixed"), says=("--noise_mode",), absent=("{tmp}/out",)),
    "benchmark_without_torch": Case("benchmark", ("--what=generator",),
                                    says=("needs PyTorch", "--notorch"), no_torch=True),
    "segment_segmenter_missing": Case(
        "segment", ("--segmenter={tmp}/nope", "--images={tmp}/imgs", "--out={tmp}/out"),
        says=("does not exist", "experiments.train_student"), setup=_images("imgs", ("rgb",)),
        absent=("{tmp}/out",)),
    "segment_image_over_the_pixel_limit": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--max_pixels=100"), says=("none of the 1 image(s) could be read",),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "segment_max_pixels_zero": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/out",
                    "--max_pixels=0"), says=("--max_pixels=0 must be >= 1",),
        setup=_images("imgs", ("rgb",)), absent=("{tmp}/out",)),
    "convert_lr_mlp_zero": Case(
        "convert", ("--src={tmp}/model.pt", "--dst={tmp}/w", "--lr_mlp=0"),
        says=("--lr_mlp=0.0 must be > 0",), setup=_file("model.pt", b"x"), absent=("{tmp}/w",)),
    "prepare_data_size_zero": Case(
        "prepare_data", ("--src={tmp}/src", "--name=toy", "--size=0", "--data_dir={tmp}/data"),
        says=("--size=0 must be >= 1",), setup=_images("src", ("rgb",)), absent=("{tmp}/data",)),
    "prepare_data_symlink_loop": Case(
        "prepare_data", ("--src={tmp}/src", "--name=loop", "--size=8", "--data_dir={tmp}/data"),
        code=0, says=("1 images written",), setup=_symlink_loop("src"),
        check=_check_symlink_loop, keep=("{tmp}/src",)),
    "pipeline_real_test_of_another_size": Case(
        "pipeline", PIPE + ("--workdir={tmp}/run",),
        says=("--real_test", "was built with size 32", "--real_test="),
        setup=_real_test_split("real", 32), keep=("{tmp}/real",), absent=("{tmp}/run",)),
    # -------------------------------------------------------------- full disks (tmpfs or ulimit)
    "segment_disk_full": Case(
        "segment", ("--segmenter={seg}", "--images={tmp}/imgs", "--out={tmp}/full/out"),
        disk_kib=16, setup=_images("imgs", ("rgb",) * 4), keep=("{tmp}/imgs",),
        absent=("{tmp}/full/out",)),
    # The cases that run a program before the disk fills use the 16 px world (gen16 ...).
    "invert_disk_full": Case(
        "invert", ("--generator={gen16}", "--alpha={alpha16}", "--images={tmp}/imgs",
                   "--out={tmp}/full/out", "--steps=2", "--batch=2"), says=("full/out ",),
        disk_kib=16, setup=_images("imgs", ("rgb",) * 4), keep=("{tmp}/imgs",),
        absent=("{tmp}/full/out",)),
    "edit_disk_full": Case(
        "edit", ("--generator={other}", "--alpha={alpha_other}", "--seeds=0,1,2",
                 "--out={tmp}/full/out"), disk_kib=16, absent=("{tmp}/full/out",)),
    "make_pairs_disk_full": Case(
        "make_pairs", ("--generator={gen16}", "--alpha={alpha16}", "--out={tmp}/full/out",
                       "--n=8", "--batch=4"), says=("full/out ",), disk_kib=16,
        absent=("{tmp}/full/out",)),
    # No grids (--n_sample=0): flags.json and the logs fit, the first checkpoint does not; Orbax's
    # asynchronous save fails in its threads and is reported when it surfaces, as one line. R1 in
    # every iteration (--d_reg_every=1): one compiled step.
    "train_checkpoint_disk_full": Case(
        "train", TRAIN16 + ("--workdir={tmp}/full/run", "--n_sample=0", "--d_reg_every=1"),
        disk_kib=64,
        says=("full/run/checkpoints/3 ",), absent=("{tmp}/full/run/checkpoints/3",)),
    "pretrain_gan_export_disk_full": Case(
        "pretrain_gan", GAN16 + ("--workdir={tmp}/run", "--export={tmp}/full/w",
                                 "--d_reg_every=1"), disk_kib=16,
        says=("full/w ",), absent=("{tmp}/full/w",)),
    # -------------------------------------------------------------- pipeline
    "pipeline_student_lr_nan": Case("pipeline", PIPE + ("--workdir={tmp}/run",
                                                        "--student_lr=nan"),
                                    says=("--student_lr=nan must be a finite number",),
                                    absent=("{tmp}/run", "{tmp}/real")),
    "pipeline_generator_missing": Case(
        "pipeline", ("--generator={tmp}/nope",) + PIPE[1:] + ("--workdir={tmp}/run",),
        says=("does not exist", "experiments.convert"), absent=("{tmp}/run", "{tmp}/real")),
    "pipeline_workdir_of_another_program": Case(
        "pipeline", PIPE + ("--workdir={tmp}/run",), says=("holds a pretrain_gan run",),
        setup=_foreign_run("run", "pretrain_gan"), keep=("{tmp}/run",)),
}


# ------------------------------------------------------------------------------------------------
# Running the cases


def _digest(path: str):
  """sha256 of a file, or of a folder's tree (names, file contents, links); None if absent."""
  if not os.path.lexists(path):
    return None
  h = hashlib.sha256()
  if os.path.isfile(path):
    with open(path, "rb") as f:
      h.update(f.read())
    return h.hexdigest()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(dirs + files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b"\0")
      if os.path.isfile(full):
        with open(full, "rb") as f:
          h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


def _leftovers(folder: str) -> list[str]:
  """Temporary files or folders a run left anywhere under `folder`."""
  found = []
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      if ((name.startswith(".") and ("tmp" in name or ".old-" in name))
          or name.startswith("incomplete.") or ".tmp" in name or "orbax-checkpoint-tmp" in name):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return found


@dataclasses.dataclass
class Outcome:
  tmp: str
  skip: str = ""
  result: Optional[subprocess.CompletedProcess] = None
  before: dict = dataclasses.field(default_factory=dict)
  after: dict = dataclasses.field(default_factory=dict)
  leftovers: Optional[list] = None


def _limit_disk(name: str, tmp: str, kib: int) -> int:
  """{tmp}/full: a tmpfs of `kib` KiB if this process may mount one (returns 0), else a plain
  folder and the `ulimit -f` to run the case under (returns kib)."""
  full = os.path.join(tmp, "full")
  os.makedirs(full)
  if os.geteuid() == 0 and shutil.which("mount"):
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", full],
                       capture_output=True)
    if r.returncode == 0:
      DISK_FULL[name] = "tmpfs"
      return 0
  DISK_FULL[name] = "ulimit -f"
  return kib


def _command(case: Case, paths: dict, fsize_kib: int) -> list[str]:
  argv = [sys.executable, "-m", f"experiments.{case.prog}",
          *(a.format(**paths) for a in case.args)]
  if case.readonly and os.geteuid() == 0:
    assert shutil.which("setpriv"), "setpriv (util-linux) runs the read-only cases as root"
    argv = NO_DAC + argv
  if fsize_kib:
    return ["bash", "-c", f'ulimit -f {fsize_kib} && exec "$@"', "bash", *argv]
  return argv


def _no_torch_path(tmp: str, names=("torch",)) -> str:
  """A folder of packages `names` that fail to import, for the front of PYTHONPATH."""
  root = os.path.join(tmp, ".no_torch")
  for name in names:
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "__init__.py"), "w") as f:
      f.write(f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n')
  return root


def _run(argv: list[str], no_torch: str = "") -> subprocess.CompletedProcess:
  env = cli_env(devices=1)
  if no_torch:  # a fresh interpreter: the fake packages (hide=) must come first on its path
    env["PYTHONPATH"] = f"{no_torch}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  return cli_runner.run(argv, cwd=ROOT, env=env, timeout=TIMEOUT)


def _selected(request) -> list[str]:
  names = []
  for item in request.session.items:
    spec = getattr(item, "callspec", None)
    if getattr(item, "module", None) is sys.modules[__name__] and spec and "name" in spec.params:
      names.append(spec.params["name"])
  return names


@pytest.fixture(scope="module")
def outcomes(request, world, tmp_path_factory):
  """{case name: Outcome} of every selected case, run WORKERS at a time."""
  out, jobs = {}, {}
  for name in _selected(request):
    case = CASES[name]
    tmp = str(tmp_path_factory.mktemp(name[:40]))
    o = out[name] = Outcome(tmp=tmp)
    paths = dict(world, tmp=tmp)
    if case.setup is not None:
      try:
        o.skip = case.setup(tmp, world) or ""
      except pytest.skip.Exception as e:  # e.g. torch missing: skip this case, not the module
        o.skip = str(e)
    if o.skip:
      continue
    o.before = {p.format(**paths): _digest(p.format(**paths)) for p in case.keep}
    fsize = case.fsize_kib or (_limit_disk(name, tmp, case.disk_kib) if case.disk_kib else 0)
    hidden = ("torch",) * case.no_torch + case.hide
    jobs[name] = (_command(case, paths, fsize), _no_torch_path(tmp, hidden) if hidden else "")
  try:
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
      futures = {name: pool.submit(_run, *job) for name, job in jobs.items()}
      for name, future in futures.items():
        out[name].result = future.result()
        out[name].after = {p: _digest(p) for p in out[name].before}
        if DISK_FULL.get(name) == "tmpfs":
          out[name].leftovers = _leftovers(out[name].tmp)  # before the tmpfs goes
  finally:
    for name, how in DISK_FULL.items():
      if how == "tmpfs":
        subprocess.run(["umount", os.path.join(out[name].tmp, "full")], check=False)
  return out


def _params():
  return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=c.xfail)) if c.xfail
          else name for name, c in CASES.items()]


@pytest.mark.parametrize("name", _params())
def test_hostile_input(name, outcomes, world):
  case, o = CASES[name], outcomes[name]
  if o.skip:
    pytest.skip(o.skip)
  r = o.result
  paths = dict(world, tmp=o.tmp)
  assert "Traceback" not in r.stderr, r.stderr[-4000:]
  assert r.returncode == case.code, (r.returncode, r.stderr[-3000:])
  errors = [line for line in r.stderr.splitlines() if line.startswith(f"{case.prog}: error:")]
  if case.code == 2:
    assert len(errors) == 1, r.stderr[-3000:]
    for text in case.says:
      assert text in errors[0], (text, errors[0])
    if case.disk_kib:
      assert any(t in errors[0] for t in ("the disk is full", "the file is too large")), errors[0]
    shown = errors[0].replace(o.tmp, "/home/me/work/xy")
    for key in ("gen16", "alpha16", "data16", "gen", "other", "alpha_other", "seg", "data64"):
      shown = shown.replace(world[key], "/home/me/w/" + key[:5].ljust(5, "x"))
    assert len(shown) <= MAX_LINE, (len(shown), shown)
  else:
    assert not errors, errors
    for text in case.says:
      assert text in r.stdout, (text, r.stdout[-2000:])
  for path, digest in o.before.items():
    assert o.after[path] == digest, f"{path} changed"
  for path in case.absent:
    assert not os.path.lexists(path.format(**paths)), f"{path.format(**paths)} exists"
  left = o.leftovers if o.leftovers is not None else _leftovers(o.tmp)
  assert not left, left
  if case.check is not None:
    case.check(o)


def test_enough_cases():
  assert len(CASES) >= 127
  progs = {c.prog for c in CASES.values()}
  assert progs == {"train", "pretrain_gan", "convert", "prepare_data", "sample", "evaluate",
                   "benchmark", "make_pairs", "train_student", "segment", "pipeline", "invert",
                   "edit", "export_segmenter", "serve"}, progs
