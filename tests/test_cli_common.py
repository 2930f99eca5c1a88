"""What every CLI shares: bad input is refused with exactly one `prog: error:` line (exit 2, no
traceback) before any work, and destinations are never silently mixed or half-written.

The CLIs run as subprocesses (tests/test_layout.py) on a tiny world: two different random 16 px
generators and an alpha export made for the second one.
"""
import json
import os
import sys

import jax
import pytest

from tests import cli_runner
from tests.tiny_world import ROOT, cli_env, make_generator_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """{'gen': generator A, 'other': generator B, 'alpha': an alpha export made for A,
  'alpha_other': one made for B}."""
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.system import training, weights
  root = tmp_path_factory.mktemp("world")
  gen = make_generator_dir(str(root / "gen"), seed=0)
  other = make_generator_dir(str(root / "other"), seed=1)
  alphas = {}
  for name, path in (("alpha", gen), ("alpha_other", other)):
    loaded = weights.load_generator(path)
    params = training.init_alpha(AlphaNetwork(loaded.size), loaded.module, jax.random.key(0))
    alphas[name] = weights.save_weights(str(root / name), {"size": 16, "kind": "labels4free_alpha",
                                                           **loaded.alpha_identity()},
                                        {"alpha": params})
  return {"gen": gen, "other": other, **alphas}


def _run(prog, *args):
  return cli_runner.run([sys.executable, "-m", f"experiments.{prog}", *args], cwd=ROOT,
                        env=cli_env(devices=1), timeout=600)


def _one_error(r, prog) -> str:
  """The single `prog: error:` line of a refused run (exit 2, no traceback)."""
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith(f"{prog}: error:")]
  assert len(lines) == 1, r.stderr[-3000:]
  return lines[0]


def _snapshot(folder) -> dict:
  return {name: open(os.path.join(folder, name), "rb").read()
          for name in sorted(os.listdir(folder))}


def _leftovers(out) -> list:
  """Temporary folders `sample` left next to `out`."""
  parent, base = os.path.split(os.path.abspath(out))
  return [f for f in os.listdir(parent) if f.startswith(f".{base}.")]


# ------------------------------------------------------------------------------------------------
# sample: --out and --overwrite


def test_sample_refuses_a_non_empty_out_and_leaves_it_untouched(tmp_path, world):
  out = tmp_path / "samples"
  out.mkdir()
  (out / "images.png").write_bytes(b"an earlier run")
  (out / "000000_original.png").write_bytes(b"another picture")
  before = _snapshot(out)
  line = _one_error(_run("sample", f"--generator={world['gen']}", f"--out={out}", "--n=2"),
                    "sample")
  assert f"--out={out}" in line and "--overwrite" in line, line
  assert _snapshot(out) == before and not _leftovers(out)


def test_sample_overwrite_replaces_earlier_samples_only(tmp_path, world):
  out = tmp_path / "samples"
  out.mkdir()
  (out / "images.png").write_bytes(b"an earlier run")
  (out / "000007_original.png").write_bytes(b"a picture this run does not write")
  r = _run("sample", f"--generator={world['gen']}", f"--out={out}", "--n=2", "--batch=2",
           "--overwrite")
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["images.png"], os.listdir(out)  # the stale sample is gone
  assert (out / "images.png").read_bytes().startswith(b"\x89PNG")
  assert not _leftovers(out)
  (out / "notes.txt").write_text("mine")  # not a sample picture: --overwrite must not delete it
  before = _snapshot(out)
  line = _one_error(_run("sample", f"--generator={world['gen']}", f"--out={out}", "--overwrite"),
                    "sample")
  assert "notes.txt" in line, line
  assert _snapshot(out) == before


def test_sample_out_is_a_file(tmp_path, world):
  out = tmp_path / "file.png"
  out.write_bytes(b"x")
  line = _one_error(_run("sample", f"--generator={world['gen']}", f"--out={out}"), "sample")
  assert "--out=" in line and "is a file" in line, line


# ------------------------------------------------------------------------------------------------
# alpha exports are checked against the generator they are used with


@pytest.mark.parametrize("prog", ["sample", "evaluate"])
def test_alpha_of_another_generator_is_refused(tmp_path, world, prog):
  out = tmp_path / "out"
  r = _run(prog, f"--generator={world['gen']}", f"--alpha={world['alpha_other']}", f"--out={out}",
           "--n=2", "--batch=2")
  line = _one_error(r, prog)
  assert f"--alpha={world['alpha_other']}" in line and "other weights" in line, line
  assert not out.exists() or not os.listdir(out)
  assert not _leftovers(out)


# ------------------------------------------------------------------------------------------------
# evaluate: flag checks before any work


@pytest.mark.parametrize("flag,message", [("--threshold=2", "--threshold=2.0 must be <= 1"),
                                          ("--threshold=-0.5", "--threshold=-0.5 must be >= 0"),
                                          ("--n=0", "--n=0 must be >= 1"),
                                          ("--threshold=nan", "must be a finite number")])
def test_evaluate_checks_flags(world, flag, message):
  r = _run("evaluate", f"--generator={world['gen']}", f"--alpha={world['alpha_other']}", flag)
  line = _one_error(r, "evaluate")
  assert message in line, line


def test_evaluate_generated_writes_table_metrics_and_error_grid(tmp_path, world):
  out = tmp_path / "eval"
  r = _run("evaluate", f"--generator={world['gen']}", f"--alpha={world['alpha']}", "--n=4",
           "--batch=4", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "foreground" in r.stdout and f"wrote {out / 'metrics.json'}" in r.stdout, r.stdout
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["source"] == "generated" and metrics["n"] == 4 and "soft" in metrics
  assert (out / "errors.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_out_is_a_file(tmp_path):
  out = tmp_path / "metrics"
  out.write_text("not a directory")
  masks = os.path.join(ROOT, "tests", "data", "l4f_custom_masks")
  line = _one_error(_run("evaluate", f"--masks={masks}", f"--out={out}"), "evaluate")
  assert "--out=" in line and "is a file" in line, line
  assert out.read_text() == "not a directory"


def test_positional_arguments_are_refused():
  for prog in ("sample", "evaluate", "convert", "prepare_data", "benchmark"):
    line = _one_error(_run(prog, "stray"), prog)
    assert "unexpected arguments ['stray']" in line, line
