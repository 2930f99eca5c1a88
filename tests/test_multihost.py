"""Multi-host training: two processes on localhost (2 fake CPU devices each, jax.distributed with
gloo collectives) run `experiments.train` and end with the same A as one process with 4 devices."""
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from l4f_jax.system.weights import load_weights
from tests.tiny_world import ROOT, cli_env, make_dataset, make_generator_dir

# Every iteration an R1 step (d_reg_every=1), so each process compiles one program.
ARGS = ["--iter=3", "--batch=2", "--d_reg_every=1", "--lr=2e-3", "--trunc=0.7", "--n_sample=4",
        "--model_save_freq=100", "--save_every=2", "--log_every=1"]
TIMEOUT = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train(devices, extra, workdir, world):
  cmd = [sys.executable, "-m", "experiments.train", f"--generator={world['g']}",
         f"--dataset={world['data']}", f"--workdir={workdir}", *ARGS, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs):
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append(out)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  base = tmp_path_factory.mktemp("multihost")
  return {"g": make_generator_dir(str(base / "g16"), size=16),
          "data": make_dataset(str(base / "data"), size=16), "base": base}


def test_two_processes_match_one_process(world):
  base = world["base"]
  t0 = time.time()
  port = _free_port()
  multi = str(base / "two_processes")
  procs = [_train(2, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                      f"--process_id={k}"], multi, world) for k in range(2)]
  outs = _finish(procs)
  t_multi = time.time() - t0
  assert "2 process(es)" in outs[0] and "4 device(s)" in outs[0]
  t0 = time.time()
  single = str(base / "one_process")
  _finish([_train(4, [], single, world)])
  t_single = time.time() - t0
  _, a_multi = load_weights(os.path.join(multi, "alpha"))
  _, a_single = load_weights(os.path.join(single, "alpha"))
  diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
           for x, y in zip(jax.tree.leaves(a_multi["alpha"]), jax.tree.leaves(a_single["alpha"]))]
  print(f"2 processes x 2 devices: {t_multi:.0f} s; 1 process x 4 devices: {t_single:.0f} s; "
        f"max |alpha difference| = {max(diffs):.2e}")
  assert max(diffs) <= 1e-5
  # Logs, grids and checkpoints: one writer (process 0) for logs and pictures, all in one tree.
  with open(os.path.join(multi, "logs", "metrics.jsonl")) as f:
    assert [__import__("json").loads(r)["step"] for r in f] == [0, 1, 2, 3]
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
  assert os.path.exists(os.path.join(multi, "samples", "000000.png"))


def test_segment_two_processes_write_one_out(world):
  """`experiments.segment` under jax.distributed: each process segments its share into one
  staging folder; --out appears once, complete, and holds what one process writes."""
  from PIL import Image
  from tests.tiny_world import make_segmenter_dir
  base = world["base"]
  seg = make_segmenter_dir(str(base / "seg"), size=16)
  photos = base / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for i in range(7):
    Image.fromarray(rng.integers(0, 256, (12 + i, 20, 3), np.uint8)).save(photos / f"{i}.png")
  (photos / "7.png").write_bytes(b"not a png")

  def run(devices, extra, out):
    cmd = [sys.executable, "-m", "experiments.segment", f"--segmenter={seg}",
           f"--images={photos}", f"--out={out}", "--batch=1", *extra]
    # byte-identical across device counts: compiled as users' programs are (EXACT_XLA)
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(devices, exact=True), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  port = _free_port()
  multi, single = base / "seg_two", base / "seg_one"
  outs = _finish([run(1, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                          f"--process_id={k}"], multi) for k in range(2)])
  assert "segmented 7 image(s), skipped 1" in outs[0]
  assert "segmented" not in outs[1]          # process 1 prints nothing of its own
  _finish([run(2, [], single)])
  assert not [n for n in os.listdir(base) if n.startswith(".seg_two.tmp-")]
  a = __import__("json").load(open(multi / "segment.json"))
  b = __import__("json").load(open(single / "segment.json"))
  assert a["processes"] == 2 and b["processes"] == 1
  assert a["files"] == b["files"] and a["skipped_files"] == b["skipped_files"]
  assert sorted(os.listdir(multi / "masks")) == sorted(os.listdir(single / "masks"))
  diffs = []
  for sub in ("masks", "alpha", "cutout"):
    for name in os.listdir(single / sub):
      x = np.asarray(Image.open(multi / sub / name), np.int16)
      y = np.asarray(Image.open(single / sub / name), np.int16)
      assert x.shape == y.shape, name
      diffs.append(int(np.abs(x - y).max()))
  print(f"segment, 2 processes x 1 device vs 1 process x 2 devices: max pixel difference "
        f"{max(diffs)}")
  assert max(diffs) == 0   # per-image predictions do not depend on who computes them
  assert (multi / "contact_sheet.png").read_bytes() == (single / "contact_sheet.png").read_bytes()


def test_invert_two_processes_write_one_out(world):
  """`experiments.invert` under jax.distributed: each process inverts its share into one staging
  folder; --out appears once and holds what one process writes. A killed one-process run is
  resumed by two processes, again to the same bytes."""
  import json
  import signal
  from PIL import Image
  from l4f_jax.io import files
  from tests.tiny_world import make_alpha_dir
  base = world["base"]
  alpha = make_alpha_dir(str(base / "inv_alpha"), world["g"])
  photos = base / "inv_photos"
  photos.mkdir()
  rng = np.random.default_rng(1)
  for i in range(30):
    Image.fromarray(rng.integers(0, 256, (12 + i % 7, 20, 3), np.uint8)).save(photos / f"{i}.png")
  (photos / "5.png").write_bytes(b"not a png")

  def run(devices, extra, out):
    cmd = [sys.executable, "-m", "experiments.invert", f"--generator={world['g']}",
           f"--alpha={alpha}", f"--images={photos}", f"--out={out}", "--batch=1", "--steps=10",
           "--sheet_items=6", *extra]
    # byte-identical across device counts: compiled as users' programs are (EXACT_XLA)
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(devices, exact=True), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  def two_processes(out):
    port = _free_port()
    return _finish([run(1, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                            f"--process_id={k}"], out) for k in range(2)])

  multi, single, resumed = base / "inv_two", base / "inv_one", base / "inv_resumed"
  outs = two_processes(multi)
  assert "inverted 29 image(s), skipped 1" in outs[0]
  assert "inverted" not in outs[1]          # process 1 prints nothing of its own
  _finish([run(2, [], single)])
  # A one-process run killed (-9) once some images are done leaves its staging folder.
  proc = run(1, [], resumed)
  t0 = time.time()
  while not [e for s in _staged(base, resumed) for e in files.read_journal(s)]:
    assert proc.poll() is None and time.time() - t0 < TIMEOUT, "the run ended before the kill"
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  (left,) = _staged(base, resumed)
  journal = files.read_journal(left)
  done_before = sum("skipped" not in e for e in journal)
  assert 0 < done_before < 29
  outs = two_processes(resumed)
  assert f"{len(journal)} input(s) already done" in outs[0], outs[0][-3000:]
  assert not [n for n in os.listdir(base) if ".inv_" in n and ".tmp-" in n]

  timing = ("seconds_per_image", "images_per_second", "compile_seconds", "resumed", "processes")
  ref = json.load(open(single / "metrics.json"))
  assert ref["processes"] == 1 and ref["devices"] == 2 and ref["resumed"] == 0
  assert set(ref["psnr"]) == {str(i) for i in range(30) if i != 5}
  assert [x["file"] for x in ref["skipped_files"]] == [str(photos / "5.png")]
  for out in (multi, resumed):
    s = json.load(open(out / "metrics.json"))
    assert s["processes"] == 2 and s["devices"] == 2
    assert s["resumed"] == (done_before if out == resumed else 0)
    strip = lambda d: {k: v for k, v in d.items() if k not in timing and k != "config"}
    assert strip(s) == strip(ref)
    assert {**s["config"], "out": ""} == {**ref["config"], "out": ""}
    for sub in ("masks", "alpha", "recon", "latents", "noise"):
      names = sorted(os.listdir(single / sub))
      assert sorted(os.listdir(out / sub)) == names and len(names) == 29, sub
      for name in names:   # each image's inversion depends only on its index
        assert (out / sub / name).read_bytes() == (single / sub / name).read_bytes(), (sub, name)
    assert (out / "grid.png").read_bytes() == (single / "grid.png").read_bytes()
  print(f"invert, 2 processes x 1 device (fresh, and resuming a killed run after {done_before} "
        "images) vs 1 process x 2 devices: identical bytes")


def _staged(base, out) -> list:
  return [str(p) for p in base.glob(f".{out.name}.tmp-*")]
