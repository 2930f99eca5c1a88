"""The whole framework from an NVIDIA network snapshot, through the CLIs the README documents:
convert the committed 32 px stylegan2-ada-pytorch fixture (no torch needed), train A for a few
iterations with D started from the snapshot's D (R1 in every iteration, so one compiled step),
write pairs, train a student, segment images."""
import json
import os
import sys

import numpy as np
from PIL import Image

from tests import cli_runner
from tests.tiny_world import ROOT, cli_env

TIMEOUT = 600
SNAPSHOT = os.path.join(ROOT, "tests", "data", "nvidia", "ada_map8_32.pkl")


def _run(*args):
  out = cli_runner.run([sys.executable, "-m", *args], cwd=ROOT, env=cli_env(1), timeout=TIMEOUT)
  assert out.returncode == 0, (args[0], out.stderr[-4000:])
  return out.stdout


def test_snapshot_to_masks(tmp_path):
  g, run, pairs, student, seg = (str(tmp_path / n) for n in ("g", "run", "pairs", "st", "seg"))
  log = _run("experiments.convert", f"--src={SNAPSHOT}", f"--dst={g}")
  assert "found G_ema: Generator" in log and "  d: " in log
  _run("experiments.train", f"--generator={g}", f"--dataset={tmp_path}/data/l4f_shapes",
       "--prepare_shapes=32", f"--workdir={run}", "--iter=2", "--batch=2", "--d_reg_every=1",
       "--n_sample=2", "--eval_samples=0", "--use_disc")
  _run("experiments.make_pairs", f"--generator={g}", f"--alpha={run}/alpha", f"--out={pairs}",
       "--n=8", "--batch=4", "--noise_mode=const")
  _run("experiments.train_student", f"--pairs={pairs}", f"--workdir={student}", "--steps=3",
       "--batch=2", "--width=4", "--depth=2", "--max_width=8", "--n_sample=0")
  os.makedirs(tmp_path / "photos")
  rng = np.random.default_rng(0)
  for i, shape in enumerate([(40, 30), (32, 32)]):
    Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(
        tmp_path / "photos" / f"p{i}.png")
  _run("experiments.segment", f"--segmenter={student}/segmenter", f"--images={tmp_path}/photos",
       f"--out={seg}")
  with open(os.path.join(seg, "segment.json")) as f:
    assert json.load(f)["segmented"] == 2
  mask = np.asarray(Image.open(os.path.join(seg, "masks", "p0.png")))
  assert mask.shape == (40, 30) and set(np.unique(mask)) <= {0, 255}
  with open(os.path.join(run, "flags.json")) as f:
    assert json.load(f)["config"]["use_disc"] is True
