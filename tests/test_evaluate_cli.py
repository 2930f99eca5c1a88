"""experiments.evaluate on the released Labels4Free custom-dataset masks (official GT vs official
predictions) reproduces the official script's per-class numbers (RameenAbdal/Labels4Free README, custom_dataset table)."""
import json
import os
import sys

import pytest

from tests import cli_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASKS = os.path.join(ROOT, "tests", "data", "l4f_custom_masks")

# fg IoU, bg IoU, fg precision, fg recall, accuracy (§13.2; F1 of Cats differs in the 4th decimal
# between the table and the official formula, see tests/test_evaluation.py).
EXPECTED = {
    "Faces": (0.9781, 0.9517, 0.9840, 0.9939, 0.9847),
    "Cats": (0.9614, 0.9495, 0.9758, 0.9848, 0.9776),
    "Horse": (0.9614, 0.9733, 0.9791, 0.9815, 0.9840),
    "Cars": (0.9507, 0.9845, 0.9620, 0.9878, 0.9881),
}


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return cli_runner.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=ROOT, env=env,
                        timeout=300)


def test_custom_masks_per_class(tmp_path):
  r = _run(f"--masks={MASKS}", f"--out={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  for name in EXPECTED:
    assert name in r.stdout
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  for name, (fg_iou, bg_iou, prec, rec, acc) in EXPECTED.items():
    m = metrics[name]
    got = (m["foreground"]["iou"], m["background"]["iou"], m["foreground"]["precision"],
           m["foreground"]["recall"], m["foreground"]["accuracy"])
    assert got == pytest.approx((fg_iou, bg_iou, prec, rec, acc), abs=5e-5), name


def test_one_line_errors(tmp_path):
  r = _run(f"--gt_dir={tmp_path / 'missing'}", f"--pred_dir={tmp_path}")
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.startswith("evaluate: error:")]
  assert len(lines) == 1 and "--gt_dir=" in lines[0]
  r = _run(f"--masks={tmp_path}")
  assert r.returncode == 2 and "--masks=" in r.stderr
