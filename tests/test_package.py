"""The repository installs as a package (`pip install .`): `import l4f_jax`, the shipped
generator and the Python API (`from l4f_jax import Segmenter`) work from any folder, not only from
the repository root."""
import os
import shutil
import subprocess
import sys

import numpy as np

from tests.tiny_world import ROOT, make_segmenter_dir


def test_pip_install_then_import_outside_the_repository(tmp_path):
  src = tmp_path / "src"
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  for f in files:  # a copy, so that the build leaves nothing in the checkout
    os.makedirs(src / os.path.dirname(f), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, f), src / f)
  target = tmp_path / "site"
  r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                      "--no-build-isolation", "--target", str(target), str(src)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  page = target / "l4f_jax" / "programs" / "serve_page.html"  # experiments.serve's page
  assert page.read_bytes() == open(os.path.join(ROOT, "l4f_jax", "programs", "serve_page.html"),
                                   "rb").read()
  seg = make_segmenter_dir(str(tmp_path / "seg"), size=16)
  photo = np.random.default_rng(0).integers(0, 256, (13, 29, 3), np.uint8)
  np.save(tmp_path / "photo.npy", photo)
  code = ("import os, sys, experiments, l4f_jax, numpy as np\n"
          "from l4f_jax.system.weights import load_generator\n"
          "assert l4f_jax.__file__.startswith(os.environ['TARGET'])\n"
          "assert 'l4f_jax.system.segmentation' not in sys.modules  # import l4f_jax is cheap\n"
          "g = load_generator(os.path.join(os.path.dirname(experiments.__file__), 'assets', "
          "'shapes64'))\n"
          "print(g.size)\n"
          "from l4f_jax import Segmenter\n"
          "alpha = Segmenter.load(os.environ['SEG'])(np.load('photo.npy'))\n"
          "np.save('alpha.npy', alpha)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(target), TARGET=str(target), JAX_PLATFORMS="cpu", SEG=seg)
  r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == "64"
  from l4f_jax import Segmenter   # the checkout's code: the installed copy must agree
  np.testing.assert_array_equal(np.load(tmp_path / "alpha.npy"), Segmenter.load(seg)(photo))
