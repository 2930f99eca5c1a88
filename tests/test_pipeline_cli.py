"""experiments.pipeline end to end on a tiny world (16 px random G, l4f_shapes at 16 px, a 16 px real
test split): every stage runs, eval.json holds both scores, and a re-run reuses the finished stages."""
import json
import os
import sys

from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_generator_dir

TIMEOUT = 900


def test_pipeline_runs_every_stage_and_reuses_them(tmp_path):
  g = make_generator_dir(str(tmp_path / "g"), size=16)
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.pipeline", f"--generator={g}",
         f"--dataset={tmp_path}/data/l4f_shapes", "--prepare_shapes=32", f"--workdir={workdir}",
         "--iter=3", "--batch=2", "--d_reg_every=2", "--n_sample=2", "--eval_samples=8",
         "--pairs_n=16", "--student_steps=4", "--student_batch=2", "--student_width=4",
         "--student_depth=2", "--student_max_width=8", f"--real_test={tmp_path}/real",
         "--real_test_n=6"]
  out = cli_runner.run(cmd, cwd=ROOT, env=cli_env(2), timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(workdir / "eval.json") as f:
    ev = json.load(f)
  assert ev["labels4free"]["num_images"] == 8
  assert ev["student"]["segmented"] == 6 and 0 <= ev["student"]["foreground"]["iou"] <= 1
  assert ev["student"]["threshold"] == 0.9
  for sub in ("alpha", "pairs", "student", "segmenter", "real_test/masks"):
    assert (workdir / sub).is_dir(), sub
  assert len(os.listdir(workdir / "real_test" / "masks")) == 6
  assert (workdir / "real_test_errors.png").exists()
  pairs_json = (workdir / "pairs" / "pairs.json").stat().st_mtime_ns
  again = cli_runner.run(cmd, cwd=ROOT, env=cli_env(2), timeout=TIMEOUT)
  assert again.returncode == 0, again.stderr[-4000:]
  assert (workdir / "pairs" / "pairs.json").stat().st_mtime_ns == pairs_json  # pairs reused
  with open(workdir / "eval.json") as f:
    assert json.load(f)["student"] == ev["student"]  # resumed stages give the same result
