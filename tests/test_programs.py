"""The raw-image path as library programs, in-process on a tiny world: pairs -> student -> segment.

A random 16 px generator and a random alpha network stand in for a trained Labels4Free run; the
properties checked do not depend on the masks being good: determinism and device independence of
the pairs, the low-confidence filter, exact student resume, segment's per-input outputs at the
inputs' own sizes, skipped files, and its refusals. (The quality of the whole chain on the built-in
world is measured by the README's main command, experiments.pipeline.)
"""
import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from l4f_jax.config import resolve
from l4f_jax.models.alpha import AlphaNetwork
from l4f_jax.system import data, training, weights
from l4f_jax.errors import UserError
from l4f_jax.programs.pairs import PairsConfig, make_pairs
from l4f_jax.programs.segment import SegmentConfig, segment
from l4f_jax.programs.train_student import StudentConfig, train_and_evaluate
from l4f_jax.system.weights import load_segmenter
from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_generator_dir

N = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  base = tmp_path_factory.mktemp("programs")
  g = make_generator_dir(str(base / "g"), size=16)
  gen = weights.load_generator(g)
  a = training.init_alpha(AlphaNetwork(16), gen.module, jax.random.key(0))
  weights.save_weights(str(base / "a"), {"kind": "labels4free_alpha", **gen.alpha_identity()},
                       {"alpha": a})
  pairs = make_pairs(resolve(PairsConfig, generator=g, alpha=str(base / "a"),
                             out=str(base / "pairs"), n=N, batch=2, threshold=0.5))
  return {"g": g, "a": str(base / "a"), "pairs": pairs, "base": base}


def _records(path):
  src, _ = data.open_dataset(path)
  return sorted((src[i] for i in range(len(src))), key=lambda r: int(r["id"]))


def test_pairs_are_deterministic_and_independent_of_the_device_count(world):
  """experiments.make_pairs on 4 devices (batch 2) writes the in-process run's pairs bit for bit,
  and on 1 device (batch 5) the same pairs up to float rounding.

  Another device count is another compiled program, and XLA:CPU picks its kernels' blocking, and
  so the summation order, from the shapes and the CPU: on AMD Zen 4 one uint8 level of one pixel in
  24 pairs differed (bit-identical on Intel Sapphire Rapids). Rounding moves a value across a
  quantisation boundary by one level, at a small fraction of the values; a sample keyed by its
  place in a batch instead of its index would differ everywhere, by up to 255."""
  base = world["base"]
  runs = []
  for devices, batch in ((4, 2), (1, 5)):
    out = str(base / f"pairs_cli_{devices}dev")
    r = cli_runner.run([sys.executable, "-m", "experiments.make_pairs", f"--generator={world['g']}",
                        f"--alpha={world['a']}", f"--out={out}", f"--n={N}", f"--batch={batch}",
                        "--threshold=0.5"], cwd=ROOT, env=cli_env(devices), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs.append(_records(os.path.join(out, "data", "l4f_pairs", "16px", "1.0.0")))
  a, b = runs
  assert [int(r["id"]) for r in a] == list(range(N)) == [int(r["id"]) for r in b]
  for ra, rw in zip(a, _records(world["pairs"]["path"])):  # same layout and flags: bit for bit
    for k in ("image", "alpha", "mask"):
      np.testing.assert_array_equal(ra[k], rw[k], err_msg=k)
  stack = lambda run, k: np.stack([r[k] for r in run]).astype(np.int32)
  for k in ("image", "alpha"):
    diff = np.abs(stack(a, k) - stack(b, k))
    assert diff.max() <= 1 and np.mean(diff > 0) <= 0.01, (k, diff.max(), np.mean(diff > 0))
  # the mask is alpha > 0.5 on the float alpha: it may flip only where alpha rounds to 127 or 128
  flipped = stack(a, "mask") != stack(b, "mask")
  assert np.all(np.isin(stack(a, "alpha")[flipped], (127, 128)))
  a = _records(world["pairs"]["path"])  # the in-process run's pairs
  # The hard mask is the official rule on the float alpha; the stored alpha is round(255 alpha).
  for r in a:
    mask, alpha = r["mask"][..., 0] == 255, r["alpha"][..., 0].astype(np.float64) / 255
    assert np.all(alpha[mask] >= 0.5 - 1 / 510) and np.all(alpha[~mask] <= 0.5 + 1 / 510)
    assert set(np.unique(r["mask"])) <= {0, 255}
    frac = np.mean((alpha > 0.1) & (alpha < 0.9))
    assert abs(frac - float(r["undecided"])) <= 0.02  # uint8 rounding moves few pixels


def test_pairs_filter_and_refusals(world):
  base = world["base"]
  undecided = np.array([float(r["undecided"]) for r in _records(world["pairs"]["path"])])
  limit = float(np.median(undecided))
  kept = make_pairs(resolve(PairsConfig, generator=world["g"], alpha=world["a"],
                            out=str(base / "pairs_f"), n=N, batch=2, threshold=0.5,
                            max_undecided=limit))
  assert kept["kept"] == int(np.sum(undecided <= limit)) and kept["dropped"] == N - kept["kept"]
  ids = [int(r["id"]) for r in _records(kept["path"])]
  assert ids == [i for i in range(N) if undecided[i] <= limit]
  with pytest.raises(UserError, match="holds an earlier make_pairs output; pass --overwrite"):
    make_pairs(resolve(PairsConfig, generator=world["g"], alpha=world["a"],
                       out=str(base / "pairs_f"), n=N))
  other = make_generator_dir(str(base / "g_other"), size=16, seed=5)
  with pytest.raises(UserError, match="--alpha=.* trained on a generator with other weights"):
    make_pairs(resolve(PairsConfig, generator=other, alpha=world["a"], out=str(base / "x")))
  assert not os.path.exists(base / "x")


@pytest.fixture(scope="module")
def student(world):
  kw = dict(pairs=world["pairs"]["path"], steps=8, batch=2, width=4, depth=2, max_width=8,
            log_every=2, save_every=3, n_sample=4, sample_every=4, aug_crop_scale=0.5,
            aug_color_jitter=0.2)
  full = train_and_evaluate(resolve(StudentConfig, workdir=str(world["base"] / "s_full"), **kw))
  return full, kw


def test_student_resume_is_exact(world, student):
  full, kw = student
  part_dir = str(world["base"] / "s_part")
  train_and_evaluate(resolve(StudentConfig, workdir=part_dir, **dict(kw, steps=5)))
  part = train_and_evaluate(resolve(StudentConfig, workdir=part_dir, **kw))  # resumes at 5
  assert part["steps"] == full["steps"] == 8
  a, b = load_segmenter(full["export"]), load_segmenter(part["export"])
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  rows = lambda d: [json.loads(r) for r in open(os.path.join(d, "logs", "metrics.jsonl"))]
  assert rows(part_dir) == rows(str(world["base"] / "s_full"))
  assert sorted(os.listdir(os.path.join(part_dir, "samples"))) == ["000000.png", "000004.png",
                                                                   "000007.png"]


def test_segment_outputs_at_the_inputs_own_sizes(world, student):
  full, _ = student
  src = world["base"] / "photos"
  (src / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(src / "wide.jpg")
  Image.fromarray(rng.integers(0, 255, (41, 17), np.uint8)).save(src / "sub" / "grey.png")
  Image.fromarray(rng.integers(0, 255, (20, 20, 4), np.uint8)).save(src / "rgba.png")
  (src / "broken.png").write_bytes(b"not a png")
  out = world["base"] / "seg"
  summary = segment(resolve(SegmentConfig, segmenter=full["export"], images=str(src), out=str(out),
                            batch=1))
  assert summary["segmented"] == 3 and summary["skipped"] == 1
  assert summary["skipped_files"][0]["file"].endswith("broken.png")
  sizes = {"wide": (50, 30), "sub__grey": (17, 41), "rgba": (20, 20)}
  for stem, size in sizes.items():
    for sub, mode in (("masks", "L"), ("alpha", "L"), ("cutout", "RGBA")):
      with Image.open(out / sub / f"{stem}.png") as im:
        assert im.size == size and im.mode == mode, (stem, sub)
    with Image.open(out / "masks" / f"{stem}.png") as m, Image.open(out / "alpha" / f"{stem}.png") as a:
      m, a = np.asarray(m), np.asarray(a)
    assert set(np.unique(m)) <= {0, 255}
    sure = np.abs(a.astype(np.float64) - 255 * summary["threshold"]) > 1  # away from rounding
    np.testing.assert_array_equal((m == 255)[sure], (a >= 255 * summary["threshold"])[sure])
  assert (out / "contact_sheet.png").exists()
  before = sorted(os.listdir(out))
  with pytest.raises(UserError, match="holds an earlier segment output; pass --overwrite"):
    segment(resolve(SegmentConfig, segmenter=full["export"], images=str(src), out=str(out)))
  assert sorted(os.listdir(out)) == before
  with pytest.raises(UserError, match="is not a segmenter export"):
    segment(resolve(SegmentConfig, segmenter=world["g"], images=str(src), out=str(out / "n")))


def _reference_alpha(seg, rgb, fit):
  """The student's soft mask of a picture, written out with PIL and NumPy from the fit rules of
  docs/segmentation.md (independently of image_io.fit_tiles / unfit_alpha)."""
  from l4f_jax.method.student import predict_alpha
  s, (h, w) = seg.size, rgb.shape[:2]
  run = lambda tile: np.asarray(predict_alpha(seg.params, (tile.astype(np.float32) / 127.5 - 1)[None],
                                              model=seg.module))[0, ..., 0]
  resize = lambda a, size, f: np.asarray(Image.fromarray(a).resize(size, f))
  if fit == "stretch":
    return resize(run(resize(rgb, (s, s), Image.LANCZOS)), (w, h), Image.BILINEAR)
  if fit == "pad":
    fh, fw = round(h * s / max(h, w)), round(w * s / max(h, w))
    y, x = (s - fh) // 2, (s - fw) // 2
    tile = np.pad(resize(rgb, (fw, fh), Image.LANCZOS), ((y, s - fh - y), (x, s - fw - x), (0, 0)),
                  mode="edge")
    return resize(np.ascontiguousarray(run(tile)[y:y + fh, x:x + fw]), (w, h), Image.BILINEAR)
  total, count = np.zeros((h, w)), np.zeros((h, w))   # crop, for a wide picture
  n = -(-w // h)
  for k in range(n):
    o = round(k * (w - h) / (n - 1))
    total[:, o:o + h] += resize(run(resize(np.ascontiguousarray(rgb[:, o:o + h]), (s, s),
                                           Image.LANCZOS)), (h, h), Image.BILINEAR)
    count[:, o:o + h] += 1
  return total / count


def test_segment_fits_outputs_and_the_python_api(world, student):
  from l4f_jax import Segmenter
  full, _ = student
  seg = load_segmenter(full["export"])
  src = world["base"] / "fit_photos"
  src.mkdir()
  rgb = np.random.default_rng(3).integers(0, 255, (21, 50, 3), np.uint8)
  Image.fromarray(rgb).save(src / "wide.png")
  api = Segmenter.load(full["export"])
  for fit in ("pad", "crop", "stretch"):
    out = world["base"] / f"fit_{fit}"
    summary = segment(resolve(SegmentConfig, segmenter=full["export"], images=str(src / "wide.png"),
                              out=str(out), fit=fit, outputs="alpha,cutout", bgcolor="0,0,255"))
    assert sorted(os.listdir(out)) == ["alpha", "contact_sheet.png", "cutout", "segment.json"]
    assert summary["files"] == [{"input": str(src / "wide.png"), "alpha": "alpha/wide.png",
                                 "cutout": "cutout/wide.png"}]
    with Image.open(out / "alpha" / "wide.png") as a, Image.open(out / "cutout" / "wide.png") as c:
      got, cut = np.asarray(a).astype(np.float64) / 255, np.asarray(c)
    assert got.shape == (21, 50) and cut.shape == (21, 50, 3)
    np.testing.assert_allclose(got, _reference_alpha(seg, rgb, fit), atol=0.5 / 255 + 1e-4)
    np.testing.assert_allclose(api(rgb, fit=fit), got, atol=0.5 / 255 + 1e-6)  # same path
    blue = got[..., None] * rgb + (1 - got[..., None]) * np.array([0, 0, 255])
    assert np.abs(cut - blue).max() <= 1.0
  many = api([Image.fromarray(rgb), rgb[:7, :9]])
  assert [a.shape for a in many] == [(21, 50), (7, 9)]
  assert api.masks(rgb[:7, :9]).dtype == bool


def test_evaluate_scores_a_segmenter_against_exact_masks(world, student):
  from l4f_jax.method.evaluation import mask_metrics
  from l4f_jax.programs.evaluate import EvaluateConfig, evaluate
  full, _ = student
  imgs, gts = world["base"] / "ev_images", world["base"] / "ev_masks"
  imgs.mkdir()
  gts.mkdir()
  rng = np.random.default_rng(1)
  gt = {}
  for i, (h, w) in enumerate(((16, 16), (24, 20), (13, 31))):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(imgs / f"im{i}.png")
    gt[f"im{i}"] = rng.random((h, w)) < 0.4
    Image.fromarray(gt[f"im{i}"].astype(np.uint8)).save(gts / f"im{i}.png")  # 0/1 masks
  out = world["base"] / "ev_out"
  result = evaluate(resolve(EvaluateConfig, segmenter=full["export"], images=str(imgs),
                            gt_masks=str(gts), out=str(out)), log=lambda s: None)
  pred = {s: np.asarray(Image.open(out / "segment" / "masks" / f"{s}.png")) == 255 for s in gt}
  want = mask_metrics([gt[s] for s in sorted(gt)], [pred[s] for s in sorted(gt)])
  assert result["foreground"] == want["foreground"] and result["segmented"] == 3
  with Image.open(out / "errors.png") as e:   # inputs of three sizes: common thumbnails
    assert e.size[1] == 2 + 4 * 130 and e.size[0] > 2 + 3 * 130   # 4 rows, 3 columns + labels
  assert json.load(open(out / "metrics.json"))["foreground"] == want["foreground"]
  with pytest.raises(UserError, match="--images and --gt_masks go together"):
    evaluate(resolve(EvaluateConfig, segmenter=full["export"], images=str(imgs), out=str(out)))
