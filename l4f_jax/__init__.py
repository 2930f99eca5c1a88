"""l4f_jax: Labels4Free in JAX/Flax. `from l4f_jax import Segmenter` is the Python API of a
trained student (`l4f_jax.system.segmentation.Segmenter`); it is imported on first use, so that
`import l4f_jax` stays cheap."""
import importlib

__all__ = ["Segmenter"]


def __getattr__(name):
  if name == "Segmenter":
    return importlib.import_module("l4f_jax.system.segmentation").Segmenter
  raise AttributeError(f"module 'l4f_jax' has no attribute {name!r}")
