"""Ctrl-C, SIGTERM and kill -9 at the CLI level: one interrupt path for every program.

Each test starts a real CLI subprocess, signals it at a chosen moment and checks:
- exit status 130 within a few seconds (interrupts.GRACE_S plus the start-up margin), exactly one
  `prog: error: stopped by ...` line and no traceback;
- no half-written output: a staging folder is removed, or, for the per-input programs (segment,
  invert), kept, named in the line and resumed by the same command, whose result equals an
  uninterrupted run's byte for byte;
- a staging folder that kill -9 left is resumed (segment) or removed with a line (make_pairs).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from l4f_jax.system import interrupts
from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_dataset, make_generator_dir

ASSET = os.path.join(ROOT, "experiments", "assets", "shapes64")
STOP_S = interrupts.GRACE_S + 3.0  # the longest a signalled CLI may take to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A 16 px generator, an alpha export for it, a 16 px segmenter export, a dataset, images."""
  import jax
  from l4f_jax.config import to_dict
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.system import training, weights
  from l4f_jax.models.unet import SegmenterArch
  from l4f_jax.system.weights import SEGMENTER_KIND as KIND

  root = tmp_path_factory.mktemp("interrupts")
  gen = make_generator_dir(str(root / "gen"), 16)
  loaded = weights.load_generator(gen)
  a_params = training.init_alpha(AlphaNetwork(16), loaded.module, jax.random.key(0))
  alpha = weights.save_weights(str(root / "alpha"), {"size": 16, "kind": "labels4free_alpha",
                                                     **loaded.alpha_identity()}, {"alpha": a_params})
  arch = SegmenterArch(width=4, depth=2, blocks=1, max_width=8)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(arch.module().init, jax.random.key(0),
                          np.zeros((1, 16, 16, 3), np.float32))["params"]
  seg = weights.save_weights(str(root / "seg"), {"kind": KIND, "size": 16, "arch": to_dict(arch),
                                                 "threshold": 0.5},
                             {"segmenter": jax.tree.map(
                                 lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32),
                                 shapes)})
  images = root / "images"
  images.mkdir()
  for i in range(600):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
  few = root / "few"
  few.mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(few / f"{i}.png")
  data64 = make_dataset(str(root / "data"), 64, 8)
  return {"root": root, "gen": gen, "alpha": alpha, "seg": seg, "images": str(images),
          "few": str(few), "data64": data64}


class _Cli:
  """A CLI subprocess whose stdout / stderr lines are collected while it runs."""

  def __init__(self, prog: str, args, env: dict):
    self.proc = subprocess.Popen([sys.executable, "-m", f"experiments.{prog}", *args], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.out, self.err = [], []
    self._threads = [threading.Thread(target=self._read, args=(f, lines), daemon=True)
                     for f, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
    for t in self._threads:
      t.start()

  @staticmethod
  def _read(stream, lines):
    for line in stream:
      lines.append(line)

  def poll(self):
    return self.proc.poll()

  def send_signal(self, sig):
    self.proc.send_signal(sig)

  def kill(self):
    self.proc.kill()

  def communicate(self, timeout=None):
    self.proc.wait(timeout=timeout)
    for t in self._threads:
      t.join(timeout=10)
    return "".join(self.out), "".join(self.err)

  @property
  def returncode(self):
    return self.proc.returncode


def _start(prog: str, *args, cache: bool = True) -> _Cli:
  env = cli_env(devices=1)
  if not cache:  # a real compile (no persistent cache hit), logged, so the signal lands inside it
    env.pop("JAX_COMPILATION_CACHE_DIR")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_LOG_COMPILES"] = "1"
  return _Cli(prog, args, env)


def _run(prog: str, *args) -> subprocess.CompletedProcess:
  """An uninterrupted reference run."""
  r = cli_runner.run([sys.executable, "-m", f"experiments.{prog}", *args], cwd=ROOT,
                     env=cli_env(devices=1), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, f"ended early: {proc.communicate()[1][-3000:]}"
    assert time.monotonic() < deadline, "the moment to signal never came"
    time.sleep(0.02)


def _journal(out: str) -> int:
  """Inputs recorded as done in the staging folder of `out` (0 if none)."""
  paths = glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-*",
                                 ".l4f_journal.jsonl"))
  return sum(1 for p in paths for _ in open(p)) if paths else 0


def _staging(out: str) -> list[str]:
  return glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-*"))


def _signal(proc: subprocess.Popen, sig=signal.SIGINT) -> tuple[str, float]:
  """Sends `sig`; returns (the one error line, seconds until the process ended)."""
  t0 = time.monotonic()
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  took = time.monotonic() - t0
  assert proc.returncode == 130, (proc.returncode, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.splitlines() if ": error: " in line]
  assert len(lines) == 1, err[-3000:]
  assert took < STOP_S, (took, lines)
  return lines[0], took


def _tree_bytes(folder: str) -> dict:
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      p = os.path.join(root, n)
      out[os.path.relpath(p, folder)] = open(p, "rb").read()
  return out


def test_sigint_while_train_compiles(world):
  """The step's XLA compile runs in native code, where no Python handler runs (it took 10 s for
  the shipped 64 px generator without the compilation cache here): the watchdog ends the process
  GRACE_S after the signal, before any checkpoint. JAX_LOG_COMPILES says when it starts."""
  run = str(world["root"] / "run")
  proc = _start("train", f"--generator={ASSET}", f"--dataset={world['data64']}",
                "--batch=1", "--iter=50", f"--workdir={run}", cache=False)
  _wait_for(lambda: any("Compiling jit(fn)" in line for line in list(proc.err)), proc)
  time.sleep(1.0)  # into XLA's own compile
  line, took = _signal(proc)
  print(f"train stopped {took:.1f} s after SIGINT: {line}")
  assert line.startswith("train: error: stopped by SIGINT; no checkpoint yet in"), line
  assert took >= interrupts.GRACE_S - 0.5, took  # the watchdog ended it, not the main thread
  assert not any("Finished XLA compilation of jit(fn)" in line for line in proc.err)
  assert os.listdir(os.path.join(run, "checkpoints")) == []


def test_sigint_while_starting(world):
  proc = _start("segment", f"--segmenter={world['seg']}", f"--images={world['few']}",
                f"--out={world['root'] / 'start_out'}")
  time.sleep(0.8)  # importing jax
  line, _ = _signal(proc)
  assert "stopped by SIGINT" in line, line
  assert not os.path.exists(world["root"] / "start_out")
  assert not _staging(str(world["root"] / "start_out"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_segment_interrupted_then_resumed(world, sig):
  """Ctrl-C keeps the staging folder and names it; kill -9 leaves it. Either way the same command
  resumes from it and writes exactly what an uninterrupted run writes."""
  ref = str(world["root"] / "seg_ref")
  if not os.path.exists(ref):
    _run("segment", f"--segmenter={world['seg']}", f"--images={world['images']}", f"--out={ref}",
         "--batch=1")
  out = str(world["root"] / f"seg_{sig.name}")
  args = (f"--segmenter={world['seg']}", f"--images={world['images']}", f"--out={out}",
          "--batch=1")
  proc = _start("segment", *args)
  _wait_for(lambda: _journal(out) > 0, proc)
  if sig == signal.SIGKILL:
    proc.kill()
    proc.communicate()
  else:
    line, _ = _signal(proc)
    assert "partial outputs are kept in" in line and _staging(out)[0] in line, line
  done_before = _journal(out)
  assert 0 < done_before < 600 and not os.path.exists(out)
  r = _run("segment", *args)
  assert f"{done_before} input(s) already done" in r.stderr, r.stderr[-2000:]
  assert "segmented 600 image(s)" in r.stdout
  assert not _staging(out)
  got, want = _tree_bytes(out), _tree_bytes(ref)
  assert sorted(got) == sorted(want)
  for name in want:
    if name.startswith(("masks", "alpha", "cutout", "contact_sheet")):
      assert got[name] == want[name], name   # the sheet too: its rows are staged per input
  assert json.load(open(os.path.join(out, "segment.json")))["segmented"] == 600


def test_segment_leftover_of_other_settings_is_removed(world):
  """A killed run's staging folder is resumed only by the same command: with another threshold
  the next run removes it, saying so."""
  out = str(world["root"] / "seg_other")
  proc = _start("segment", f"--segmenter={world['seg']}", f"--images={world['images']}",
                f"--out={out}", "--batch=1")
  _wait_for(lambda: _journal(out) > 0, proc)
  proc.kill()
  proc.communicate()
  left = _staging(out)
  assert len(left) == 1
  r = _run("segment", f"--segmenter={world['seg']}", f"--images={world['images']}", f"--out={out}",
           "--batch=4", "--threshold=0.7")
  assert f"removed {left[0]}, left by an interrupted segment run" in r.stderr, r.stderr[-2000:]
  assert "already done" not in r.stderr
  assert not _staging(out) and os.path.isdir(out)


def test_invert_interrupted_then_resumed(world):
  """Each image's inversion depends only on its index: a resumed run's latents equal an
  uninterrupted run's bit for bit."""
  common = (f"--generator={world['gen']}", f"--alpha={world['alpha']}",
            f"--images={world['few']}", "--batch=1", "--steps=40")
  ref = str(world["root"] / "inv_ref")
  _run("invert", *common, f"--out={ref}")
  out = str(world["root"] / "inv")
  proc = _start("invert", *common, f"--out={out}")
  _wait_for(lambda: _journal(out) > 0, proc)
  line, _ = _signal(proc, signal.SIGTERM)
  assert line.startswith("invert: error: stopped by SIGTERM; partial outputs are kept in"), line
  done_before = _journal(out)
  r = _run("invert", *common, f"--out={out}")
  assert f"{done_before} input(s) already done" in r.stderr, r.stderr[-2000:]
  summary = json.load(open(os.path.join(out, "metrics.json")))
  assert summary["inverted"] == 6 and summary["resumed"] == done_before
  for i in range(6):
    for sub, ext in (("latents", "npy"), ("masks", "png"), ("recon", "png"), ("alpha", "png")):
      a = open(os.path.join(ref, sub, f"{i}.{ext}"), "rb").read()
      b = open(os.path.join(out, sub, f"{i}.{ext}"), "rb").read()
      assert a == b, (sub, i)
  assert json.load(open(os.path.join(ref, "metrics.json")))["psnr"] == summary["psnr"]
  # The grid rows of the images done before the signal were staged: the same grid.
  assert open(os.path.join(ref, "grid.png"), "rb").read() == \
      open(os.path.join(out, "grid.png"), "rb").read()


def test_edit_interrupted_leaves_nothing(world):
  out = str(world["root"] / "edit")
  proc = _start("edit", f"--generator={world['gen']}", f"--alpha={world['alpha']}",
                "--seeds=0,1,2,3", f"--out={out}", cache=False)
  _wait_for(lambda: any("Compiling jit(" in line for line in list(proc.err)), proc)
  line, _ = _signal(proc)
  assert "stopped by SIGINT" in line, line
  assert not os.path.exists(out) and not _staging(out)


def test_make_pairs_interrupted_and_killed(world):
  """Ctrl-C removes the staging folder; the folder kill -9 leaves is removed by the next run,
  which says so and completes."""
  out = str(world["root"] / "pairs")
  args = (f"--generator={world['gen']}", f"--alpha={world['alpha']}", f"--out={out}",
          "--n=4096", "--batch=4")
  proc = _start("make_pairs", *args)
  _wait_for(lambda: bool(glob.glob(os.path.join(out + "*", "parts", "part-*"))
                         or glob.glob(os.path.join(os.path.dirname(out), ".pairs.tmp-*", "parts",
                                                   "part-*"))), proc)
  line, _ = _signal(proc)
  assert "stopped by SIGINT" in line, line
  assert not os.path.exists(out) and not _staging(out)
  proc = _start("make_pairs", *args)
  _wait_for(lambda: bool(_staging(out)), proc)
  proc.kill()
  proc.communicate()
  left = _staging(out)
  assert len(left) == 1
  r = _run("make_pairs", *args[:3], "--n=8", "--batch=4")
  assert f"removed {left[0]}, left by an interrupted make_pairs run" in r.stderr, r.stderr[-2000:]
  assert not _staging(out) and os.path.exists(os.path.join(out, "pairs.json"))
