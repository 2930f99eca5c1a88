"""A tiny Labels4Free world for the training-system tests: a random 16/32 px generator written as a
converted-weight directory (with 'd' and 'latent_avg') and a small l4f_shapes dataset."""
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.datasets.shapes import prepare_shapes
from l4f_jax.system.weights import discriminator_from_config, generator_from_config, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Compiled programs persist across the test processes (and sessions): keyed by program, compile
# options and jax version, so they only save time.
XLA_CACHE = os.path.join(tempfile.gettempdir(), f"l4f_jax_test_xla_cache_{jax.__version__}")
# Cheap compiles for the tiny programs (they run in milliseconds either way), in-process
# (conftest.py) and in every CLI subprocess: no LLVM optimisation (a sharded GAN step: 40 s of CPU
# -> 23 s), and XLA:CPU's older loop emitters instead of its MLIR fusion emitters, which take
# most of a compile (the float64 parity test's R1 step: 10.4 s -> 3.2 s, plain step 6.8 -> 1.9 s).
# The loop emitters round some elements differently at other batch sizes (one uint8 level in one
# pixel of 24 pairs at batch 5 vs 2 x 4), unlike the fusion emitters that users' programs run
# with; tests of bit-identical outputs across device counts use EXACT_XLA.
EXACT_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FAST_XLA = f"{EXACT_XLA} --xla_cpu_use_fusion_emitters=false"


def cli_env(devices: int = 4, exact: bool = False) -> dict:
  """Environment of a CLI subprocess on `devices` fake CPU devices (`exact`: EXACT_XLA)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices} "
                         f"{EXACT_XLA if exact else FAST_XLA}"),
              JAX_COMPILATION_CACHE_DIR=XLA_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def tiny_config(size: int = 16) -> dict:
  return dict(size=size, style_dim=16, n_mlp=2, channel_multiplier=None, channel_base=16 * size,
              channel_max=16, lr_mlp=0.01, source="tests.tiny_world", kind="stylegan2")


def random_generator_params(g, key):
  """G params with every leaf perturbed: a fresh G has zero noise weights and biases, so G_bg
  (4x4 activation zeroed) would be exactly 0."""
  g_params = g.init(key, jnp.zeros((1, g.style_dim)), noise_key=key)["params"]
  leaves, tree = jax.tree.flatten(g_params)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def make_generator_dir(path: str, size: int = 16, seed: int = 0) -> str:
  """Random G (+ D) in the converted-weight format; returns `path`."""
  config = tiny_config(size)
  g = generator_from_config(config)
  d = discriminator_from_config(config)
  kg, kd = jax.random.split(jax.random.key(seed))
  g_params = random_generator_params(g, kg)
  d_params = d.init(kd, jnp.zeros((2, size, size, 3)))["params"]
  save_weights(path, config, {"g_ema": g_params, "d": d_params,
                              "latent_avg": jnp.zeros((1, g.style_dim))})
  return path


def make_dataset(data_dir: str, size: int = 16, num_examples: int = 64) -> str:
  """l4f_shapes at `size` px; returns the prepared dataset directory."""
  return prepare_shapes(data_dir, size=size, num_examples=num_examples)


def make_segmenter_dir(path: str, size: int = 16, seed: int = 0, **config) -> str:
  """A random student (width 4, depth 2) in the segmenter export format; `config` adds fields
  (e.g. provenance); returns `path`."""
  import numpy as np
  from l4f_jax.config import to_dict
  from l4f_jax.models.unet import SegmenterArch
  from l4f_jax.system.weights import SEGMENTER_KIND
  arch = SegmenterArch(width=4, depth=2, blocks=1, max_width=8)
  shapes = jax.eval_shape(arch.module().init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3)))["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  save_weights(path, {"kind": SEGMENTER_KIND, "size": size, "arch": to_dict(arch),
                      "threshold": 0.5, **config}, {"segmenter": params})
  return path


def make_alpha_dir(path: str, generator_dir: str, seed: int = 0) -> str:
  """A freshly initialised alpha network for the generator at `generator_dir`, exported as training
  exports it (with the generator's identity); returns `path`."""
  from l4f_jax.models.alpha import AlphaNetwork
  from l4f_jax.system import training, weights
  gen = weights.load_generator(generator_dir)
  params = training.init_alpha(AlphaNetwork(gen.size), gen.module, jax.random.key(seed))
  return weights.save_weights(path, {"size": gen.size, "kind": "labels4free_alpha",
                                     **gen.alpha_identity()}, {"alpha": params})


def run_snippet(snippet: str, art_dir: str, cwd, hidden: tuple, **env) -> np.ndarray:
  """A docs snippet that reads OUT/ and leaves `alpha`, run in a fresh interpreter in `cwd`
  (outside the checkout, no PYTHONPATH) with the `hidden` modules unimportable; its alpha."""
  code = (f"import sys\nfor name in {tuple(hidden)!r}:\n"
          "  sys.modules[name] = None  # any import of them now fails\n"
          + snippet.replace("OUT/", art_dir + "/")
          + "\nimport numpy\nnumpy.save('alpha.npy', alpha)\n")
  env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env}
  r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return np.load(os.path.join(cwd, "alpha.npy"))
