"""experiments.train end to end on a tiny world (16 px random G, 64 l4f_shapes images, 4 fake
devices): its outputs, exact resume after SIGKILL, and its one-line input errors."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from l4f_jax.system.weights import load_weights
from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_dataset, make_generator_dir

LAST = 40  # --iter: iterations 0 .. 40
ARGS = [f"--iter={LAST}", "--batch=2", "--d_reg_every=4", "--lr=2e-3", "--trunc=0.7",
        "--bg_coverage_wt=1", "--n_sample=4", "--model_save_freq=20", "--save_every=8",
        "--keep=2", "--log_every=5", "--eval_samples=8", "--seed=3"]
TIMEOUT = 600


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  base = tmp_path_factory.mktemp("train_cli")
  return {"g": make_generator_dir(str(base / "g16"), size=16),
          "g32": make_generator_dir(str(base / "g32"), size=32, seed=1),
          "data": make_dataset(str(base / "data"), size=16), "base": base}


def _cmd(world, workdir, *extra):
  return [sys.executable, "-m", "experiments.train", f"--generator={world['g']}",
          f"--dataset={world['data']}", f"--workdir={workdir}", *ARGS, *extra]


def _run(cmd):
  out = cli_runner.run(cmd, cwd=ROOT, env=cli_env(4), timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def _alpha(workdir):
  return load_weights(os.path.join(workdir, "alpha"))[1]["alpha"]


def _metrics(workdir):
  with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
    return [json.loads(r) for r in f]


@pytest.fixture(scope="module")
def uninterrupted(world):
  workdir = str(world["base"] / "uninterrupted")
  t0 = time.time()
  _run(_cmd(world, workdir))
  print(f"uninterrupted run: {time.time() - t0:.0f} s")
  return workdir


def test_outputs(uninterrupted, world):
  w = uninterrupted
  with open(os.path.join(w, "flags.json")) as f:
    stored = json.load(f)
  assert stored["config"]["iter"] == LAST and stored["config"]["batch"] == 2
  assert stored["program"] == "labels4free" and stored["config"]["method"]["truncation"] == 0.7
  assert stored["run"]["global_batch"] == 8 and stored["run"]["devices"] == 4
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["40", "41"]  # --keep=2
  rows = _metrics(w)
  assert "eval/fg_iou" in rows[-1] and rows[-1]["step"] == LAST + 1  # after LAST + 1 iterations
  rows = rows[:-1]
  assert [r["step"] for r in rows] == list(range(0, LAST + 1, 5))  # iteration index
  for k in ("d_loss", "a_loss", "alpha_mean", "alpha_frac_fg", "a_binarization", "r1"):
    assert all(np.isfinite(r[k]) for r in rows), k
  assert glob.glob(os.path.join(w, "logs", "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(w, "samples"))) == ["000000.png", "000020.png",
                                                            "000040.png"]
  config, trees = load_weights(os.path.join(w, "alpha"))
  assert config["size"] == 16 and config["generator"] == os.path.realpath(world["g"])
  assert sorted(trees) == ["alpha"] and config["iterations"] == LAST + 1
  with open(os.path.join(w, "eval.json")) as f:
    ev = json.load(f)
  assert ev["num_images"] == 8 and 0 <= ev["foreground"]["iou"] <= 1
  assert os.path.exists(os.path.join(w, "eval_errors.png"))
  leftovers = [p for p in glob.glob(os.path.join(w, "**", ".*tmp*"), recursive=True)]
  assert not leftovers, leftovers


def test_sigkill_and_rerun_gives_the_same_alpha(uninterrupted, world):
  workdir = str(world["base"] / "killed")
  ckdir = os.path.join(workdir, "checkpoints")
  t0 = time.time()
  proc = subprocess.Popen(_cmd(world, workdir), cwd=ROOT, env=cli_env(4),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    while proc.poll() is None and time.time() - t0 < TIMEOUT:
      if os.path.isdir(ckdir) and any(d.isdigit() for d in os.listdir(ckdir)):
        break
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps = sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())
  print(f"killed after {time.time() - t0:.0f} s with checkpoints {steps}")
  assert steps and steps[-1] < LAST + 1 and not os.path.exists(os.path.join(workdir, "alpha"))
  t0 = time.time()
  out = _run(_cmd(world, workdir))
  print(f"resumed run: {time.time() - t0:.0f} s")
  assert f"resumed from {ckdir} at iteration {steps[-1]}" in out.stderr
  a, b = _alpha(uninterrupted), _alpha(workdir)
  for x, y in zip(sorted(a.items()), sorted(b.items())):
    for k in x[1]:
      np.testing.assert_array_equal(x[1][k], y[1][k], err_msg=f"{x[0]}/{k}")
  assert _metrics(workdir) == _metrics(uninterrupted)  # redone iterations' rows were replaced


def _lines(path: str) -> int:
  with open(path) as f:
    return f.read().count("\n")


def test_sigint_stops_cleanly_and_leaves_a_resumable_checkpoint(world):
  """Ctrl-C during training (once the loop runs): exit 130 with one line naming the checkpoint,
  no traceback, no hang in the TensorBoard writer or Orbax, and that checkpoint on disk.

  The signal is sent once two metric lines (iterations 0 and 5) are logged: by then both step
  programs (R1 and plain) are compiled. After the first line alone, a loaded machine may still be
  compiling the plain step, and a signal there ends the run by the 4 s watchdog before any
  checkpoint (tests/test_interrupts.py::test_sigint_while_train_compiles tests that path)."""
  workdir = str(world["base"] / "sigint")
  metrics = os.path.join(workdir, "logs", "metrics.jsonl")
  proc = subprocess.Popen(_cmd(world, workdir, "--iter=100000"), cwd=ROOT, env=cli_env(4),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  try:
    while proc.poll() is None and time.time() - t0 < TIMEOUT:
      if os.path.exists(metrics) and _lines(metrics) >= 2:
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    t_sig = time.time()
    _, err = proc.communicate(timeout=120)  # a hang fails here
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  print(f"stopped {time.time() - t_sig:.1f} s after SIGINT")
  assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("train: error: stopped by SIGINT after iteration "), last
  step = int(last.split("; checkpoint ")[1].split()[0])
  ckdir = os.path.join(workdir, "checkpoints")
  assert step in [int(d) for d in os.listdir(ckdir) if d.isdigit()]
  assert not os.path.exists(os.path.join(workdir, ".lock"))


def _error(cmd):
  """Starts a CLI run that must fail; returns a function giving its one error line."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(4), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)

  def line():
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    errors = [s for s in err.splitlines() if s.startswith("train: error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-3000:]
    return errors[0]
  return line


def test_one_line_errors(uninterrupted, world):
  base = world["base"]
  with open(os.path.join(uninterrupted, "flags.json")) as f:
    stored = f.read()
  t0 = time.time()
  runs = {  # started together, checked in turn
      "no_generator": _error(_cmd(world, str(base / "e1"), f"--generator={base}/missing")),
      "no_dataset": _error(_cmd(world, str(base / "e2"), f"--dataset={base}/missing")),
      "size": _error(_cmd(world, str(base / "e3"), f"--generator={world['g32']}")),
      "workdir": _error(_cmd(world, uninterrupted, "--batch=1")),
      "group": _error(_cmd(world, str(base / "e5"), "--batch=6")),
  }
  msg = runs["no_generator"]()
  assert msg.startswith("train: error: --generator=") and "python -m experiments.convert" in msg
  msg = runs["no_dataset"]()
  assert "--dataset=" in msg and "python -m experiments.prepare_data" in msg
  msg = runs["size"]()
  assert "16 px" in msg and "32 px" in msg and "--size=32" in msg
  msg = runs["workdir"]()
  assert f"--workdir={uninterrupted}" in msg and "batch 2 -> 1" in msg
  msg = runs["group"]()
  assert "--batch=6" in msg and "min(batch, 4) = 4" in msg
  print(f"five error runs: {time.time() - t0:.0f} s")
  for e in ("e1", "e2", "e3", "e5"):
    assert not os.path.exists(os.path.join(base, e)), e  # nothing written on bad input
  with open(os.path.join(uninterrupted, "flags.json")) as f:
    assert f.read() == stored  # the refused run left the workdir alone


# (iter, lr, lambda, psi, devices, use_disc, reproduce, w_bg, phi_bg, sat_weight, model_save_freq)
PAPER = {  # RameenAbdal/Labels4Free README: reproduce and train-your-own settings
    "ffhq": (1200, 2e-4, 1.2, 1.0, 4, False, True, 0.0, 0.75, 1.0, 100),
    "lsun_horse": (500, 2e-4, 3.0, 1.0, 4, False, True, 0.0, 0.75, 1.0, 100),
    "lsun_cat": (900, 2e-4, 3.0, 0.5, 4, False, True, 0.0, 0.75, 1.0, 100),
    "lsun_car": (50, 2e-3, 10.0, 0.3, 1, True, True, 0.0, 0.75, 1.0, 25),
    "ffhq_own": (2000, 2e-4, 1.2, 1.0, 1, False, False, 3.0, 0.4, 1.0, 100),
    "lsun_horse_own": (2000, 2e-4, 3.0, 1.0, 1, False, False, 6.0, 0.6, 1.0, 100),
    "lsun_cat_own": (2000, 2e-4, 3.0, 0.5, 1, False, False, 4.0, 0.35, 1.0, 100),
    "lsun_car_own": (750, 8e-4, 20.0, 0.3, 1, False, False, 40.0, 0.75, 0.1, 50),
}
KEYS = ("iter", "lr", "loss_multiplier", "trunc", "emulate_devices", "use_disc", "reproduce_model",
        "bg_coverage_wt", "bg_coverage_value", "sat_weight", "model_save_freq")


def test_flagfiles_follow_the_paper_tables():
  files = [os.path.join(ROOT, "experiments", "flags", f"{n}.flags") for n in PAPER]
  script = ("import json, sys; from absl import flags; import experiments.train; F = flags.FLAGS\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "  F.unparse_flags(); F(['train', '--flagfile=' + p])\n"
            f"  out[p] = [F[k].value for k in {KEYS!r}]"
            " + [F.batch, F.fg_coverage_value, F.dataset]\n"
            "print(json.dumps(out))")
  out = subprocess.run([sys.executable, "-c", script, *files], cwd=ROOT, env=cli_env(1),
                       capture_output=True, text=True, timeout=TIMEOUT)
  assert out.returncode == 0, out.stderr[-3000:]
  parsed = json.loads(out.stdout.strip().splitlines()[-1])
  for name, path in zip(PAPER, files):
    *values, batch, phi_fg, dataset = parsed[path]
    assert tuple(values) == PAPER[name], (name, values)
    assert batch == 2 and phi_fg == 0.25 and dataset.startswith("workspace/datasets/"), name
    with open(path) as f:
      assert f"--flagfile=experiments/flags/{name}.flags" in f.readline() + f.readline(), name


def test_shapes_flags_coverage_terms_bracket_the_world():
  """shapes.flags: phi_fg below, and the fg cap 1 - phi_bg above, every l4f_shapes object's share
  (a coverage term that binds on a correct mask pushes A off the object), and w_bg > lambda (at a
  saturated alpha the binarization term pushes towards 1 with weight lambda; a weaker guard loses)."""
  from l4f_jax.datasets import shapes
  flags = {}
  with open(os.path.join(ROOT, "experiments", "flags", "shapes.flags")) as f:
    for line in f:
      if line.startswith("--") and "=" in line:
        key, value = line[2:].strip().split("=", 1)
        flags[key] = value
  cover = [shapes.render_example([0, i], 64)[1].mean() for i in range(300)]
  assert float(flags["fg_coverage_value"]) < min(cover)
  assert 1 - float(flags["bg_coverage_value"]) > max(cover)
  assert float(flags["bg_coverage_wt"]) > float(flags["loss_multiplier"]) > 0
