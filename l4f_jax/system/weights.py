"""Converted-weight directories: `config.json` plus an Orbax checkpoint of parameter trees.

Layout of a weight directory:

  <dir>/config.json   model config (size, style_dim, n_mlp, channel_multiplier, channel_base,
                      channel_max, lr_mlp), 'contents' (the stored tree names), 'source', 'format',
                      'state_sha256' ({file under state/: sha256}, written last)
  <dir>/state/        Orbax StandardCheckpointer checkpoint of a dict with any of:
                        'g_ema', 'g'     Generator params (Flax trees, rosinality names)
                        'd'              Discriminator params
                        'latent_avg'     [1, style_dim]
                        'noises'         stored noise buffers [1, r, r, 1] (rosinality order)
                        'alpha'          AlphaNetwork params

The same format holds converted PyTorch checkpoints (`python -m experiments.convert`), the small
generator shipped with the project and alpha-only exports from training. Trees are saved as host
(NumPy) arrays, so a directory written by a process with any number of devices restores in any
other: the restore target is built from the stored metadata and placed on the first local device.

Non-finite weights are refused both ways: `save_weights` will not write a tree holding NaN or
infinity, and `load_weights` checks every floating array once per load (a fraction of one forward
pass), so a diverged export or a damaged directory of an older format never turns into empty masks.

Damage is detected before any array is used: `load_weights` checks every file under state/ against
'state_sha256' (a truncated, bit-flipped, missing or replaced file is refused with one line naming
it; Orbax itself would read many such files as silently different weights), and any error of the
restore itself becomes one line naming the directory. Directories written before 'state_sha256'
existed are restored without the file check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from l4f_jax.models.stylegan2 import Discriminator, Generator, channel_table
from l4f_jax.models.unet import SegmenterArch, UNet
from l4f_jax.io import files
from l4f_jax import hardening
from l4f_jax.errors import UserError, environment_error

FORMAT = "l4f_jax.weights"
VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"
TREE_NAMES = ("g_ema", "g", "d", "latent_avg", "noises", "alpha", "segmenter")
MODEL_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_base", "channel_max",
              "lr_mlp")
CHECKSUMS = "state_sha256"
CONVERT_HINT = "make it with python -m experiments.convert"
ALPHA_HINT = "train one with python -m experiments.train"


WeightsError = UserError  # weight-file errors are ordinary one-line user errors


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs dozens of INFO lines per save/restore through absl; keep them out of the output."""
  old = logging.get_verbosity()
  logging.set_verbosity(min(old, logging.WARNING))  # absl: larger = more verbose
  try:
    yield
  finally:
    logging.set_verbosity(old)


def _held_stderr():
  """Orbax / TensorStore's stderr during a save or restore, dropped when the failure is reported
  as one line (`hardening.held_stderr`)."""
  return hardening.held_stderr(
      lambda e: isinstance(e, UserError) or environment_error(e) is not None)


def is_weight_dir(path: str) -> bool:
  """True if `path` holds a config.json written by `save_weights`."""
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def _state_digests(state: str) -> dict:
  """{path relative to the state directory: sha256 hex} of every file under `state`."""
  out = {}
  for root, dirs, names in os.walk(state):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      h = hashlib.sha256()
      with open(full, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      out[os.path.relpath(full, state).replace(os.sep, "/")] = h.hexdigest()
  return out


def _verify_state(path: str, state: str, recorded, hint: str = CONVERT_HINT) -> None:
  """Refuses a state directory whose files differ from the digests recorded at save time."""
  if not isinstance(recorded, dict):
    raise WeightsError(f"{path}/{CONFIG_FILE}: '{CHECKSUMS}' is malformed; convert the "
                       "checkpoint again")
  found = _state_digests(state)
  for rel, digest in sorted(recorded.items()):
    if rel not in found:
      raise WeightsError(f"{path} is incomplete (a {STATE_DIR}/ file is missing; --verbose names "
                         f"it); copy it again or {hint}", detail=f"missing: {STATE_DIR}/{rel}")
    if found[rel] != digest:
      raise WeightsError(f"{path} is damaged (a {STATE_DIR}/ file changed; --verbose names it); "
                         f"copy it again or {hint}",
                         detail=f"truncated, bit-flipped or replaced: {STATE_DIR}/{rel}")


def _check_trees(trees: dict) -> None:
  if not trees:
    raise WeightsError("nothing to save: the tree dict is empty")
  unknown = sorted(set(trees) - set(TREE_NAMES))
  if unknown:
    raise WeightsError(f"unknown tree name(s) {unknown}; allowed: {list(TREE_NAMES)}")


def nonfinite_leaves(trees) -> list[str]:
  """Paths ('g_ema/convs_0/conv/weight') of the floating arrays that hold NaN or infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(trees)[0]:
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      bad.append("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
  return bad


def _describe_nonfinite(bad: list[str]) -> str:
  return bad[0] + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")


def save_weights(dst: str, config: dict, trees: dict, overwrite: bool = False) -> str:
  """Writes `trees` and `config` to the weight directory `dst` atomically; returns its path.

  The directory is assembled in a temporary folder next to `dst` and renamed into place, so nothing
  is left at `dst` on failure. An existing `dst` is refused unless `overwrite`; even then only an
  empty directory or an existing weight directory is replaced.
  """
  _check_trees(trees)
  bad = nonfinite_leaves(trees)
  if bad:
    raise WeightsError(f"refusing to write {dst}: non-finite weights in "
                       f"{_describe_nonfinite(bad)} (NaN or infinity)")
  dst = os.path.abspath(dst)
  if os.path.lexists(dst):
    if not overwrite:
      raise WeightsError(f"{dst} already exists; choose a new destination or pass --overwrite")
    if not os.path.isdir(dst) or (os.listdir(dst) and not is_weight_dir(dst)):
      raise WeightsError(f"{dst} exists and is not a weight directory; refusing to overwrite it")
  tmp = files.staging_dir(dst, program="save_weights")
  try:
    host = jax.tree.map(np.asarray, dict(trees))
    with _held_stderr(), _quiet_orbax():
      # This process alone writes (weights are host numpy trees): no barrier with other processes,
      # so process 0 of a multi-host job can export while the others carry on or exit.
      me = jax.process_index()
      ckptr = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}))
      try:
        ckptr.save(os.path.join(tmp, STATE_DIR), host)
        ckptr.wait_until_finished()
      finally:
        ckptr.close()
    cfg = dict(config)
    cfg.update(format=FORMAT, version=VERSION, contents=sorted(trees))
    cfg[CHECKSUMS] = _state_digests(os.path.join(tmp, STATE_DIR))
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:  # last: it vouches for the state files
      json.dump(cfg, f, indent=2, sort_keys=True)
      f.write("\n")
    files.replace_dir(tmp, dst)
  except BaseException:
    files.remove_staging(tmp)
    _remove_tree(tmp)
    raise
  return dst


def _remove_tree(path: str, patience: float = 3.0) -> None:
  """Removes `path`, again while writes abandoned by a failed save still land in it."""
  deadline = time.monotonic() + patience
  quiet_since = None
  while time.monotonic() < deadline:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
      quiet_since = None
    elif quiet_since is None:
      quiet_since = time.monotonic()
    elif time.monotonic() - quiet_since > 0.3:
      return
    time.sleep(0.05)


def read_config(path: str, hint: str = CONVERT_HINT) -> dict:
  """Reads and checks `<path>/config.json`; raises WeightsError with a one-line message."""
  if not os.path.exists(path):
    raise WeightsError(f"weight directory {path} does not exist; {hint}")
  if not os.path.isdir(path):
    raise WeightsError(f"{path} is a file, not a converted-weight directory; {hint}")
  cfg_path = os.path.join(path, CONFIG_FILE)
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except FileNotFoundError:
    raise WeightsError(f"{path} is not a converted-weight directory (no {CONFIG_FILE}); "
                       f"{hint}") from None
  except (OSError, ValueError) as e:
    raise WeightsError(f"{cfg_path} is unreadable (--verbose says why); {hint}",
                       detail=str(e)) from None
  if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
    raise WeightsError(f"{cfg_path} is not an l4f_jax weight config (format != {FORMAT!r}); "
                       f"{hint}")
  if cfg.get("version") != VERSION:
    raise WeightsError(f"{cfg_path} has format version {cfg.get('version')}, this code reads "
                       f"{VERSION}; convert the checkpoint again")
  return cfg


def load_weights(path: str, hint: str = CONVERT_HINT) -> tuple[dict, dict]:
  """Reads a weight directory -> (config, trees); arrays land on the first local device. `hint`:
  how to make the missing or damaged directory (what the error lines say to do)."""
  cfg = read_config(path, hint)
  state = os.path.abspath(os.path.join(path, STATE_DIR))
  if not os.path.isdir(state):
    raise WeightsError(f"{path} has no {STATE_DIR}/ checkpoint (incomplete copy?); {hint}")
  if CHECKSUMS in cfg:
    _verify_state(path, state, cfg[CHECKSUMS], hint)
  with _quiet_orbax():
    ckptr = ocp.StandardCheckpointer()
  try:
    with _held_stderr(), _quiet_orbax():
      try:
        meta = ckptr.metadata(state)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                              meta)
        trees = ckptr.restore(state, target)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax / TensorStore report damaged files as bare Exception, ValueError ('DATA_LOSS:
        # ...'), OSError, KeyError, ...: any failure of the restore means the directory cannot
        # be read.
        detail = str(e).strip() or type(e).__name__
        raise WeightsError(f"cannot restore {state} (damaged or incomplete; --verbose shows "
                           "why); copy the directory again or convert it again",
                           detail=detail) from None
  finally:
    with _quiet_orbax():
      ckptr.close()
  if sorted(trees) != sorted(cfg.get("contents", [])):
    raise WeightsError(f"{path}: stored trees {sorted(trees)} do not match config 'contents' "
                       f"{cfg.get('contents')}; convert the checkpoint again")
  bad = nonfinite_leaves(trees)
  if bad:
    raise WeightsError(f"{path} holds non-finite weights ({_describe_nonfinite(bad)}): a "
                       "diverged run or damage; retrain it or convert it again")
  return cfg, dict(trees)


def _model_kwargs(config: dict, keys) -> dict:
  missing = [k for k in keys if k not in config]
  if missing:
    raise WeightsError(f"weight config lacks {missing} (alpha-only export?); use a directory "
                       f"converted from a generator checkpoint")
  kw = {k: config[k] for k in keys}
  if kw.get("channel_multiplier") is None:  # channel_base given: the multiplier is unused
    kw["channel_multiplier"] = 2
  return kw


# Config fields beyond rosinality's (NVIDIA snapshots, `system.nvidia`); absent = rosinality.
G_EXTRA_KEYS = ("conv_clamp",)
D_EXTRA_KEYS = {"d_conv_clamp": "conv_clamp", "d_stddev_feat": "stddev_feat"}


def generator_from_config(config: dict, **overrides: Any) -> Generator:
  """Generator for a weight config; `overrides` set other fields (dtype, fused_modconv, ...)."""
  kw = _model_kwargs(config, MODEL_KEYS)
  kw.update({k: config[k] for k in G_EXTRA_KEYS if config.get(k) is not None})
  kw.update(overrides)
  return Generator(**kw)


def discriminator_from_config(config: dict, stddev_group: Optional[int] = None,
                              **overrides: Any) -> Discriminator:
  """Discriminator for a weight config. The minibatch-stddev group is the caller's (a training
  choice) or else the stored `d_stddev_group` (NVIDIA's mbstd_group_size), else 4; clamp and
  stddev channels come from the config when stored."""
  kw = _model_kwargs(config, ("size", "channel_multiplier", "channel_base", "channel_max"))
  kw.update({f: config[k] for k, f in D_EXTRA_KEYS.items() if config.get(k) is not None})
  kw.update(overrides)
  if stddev_group is None:
    stddev_group = int(config.get("d_stddev_group") or 4)
  return Discriminator(stddev_group=stddev_group, **kw)


def truncation_center_is_stored(config: dict) -> bool:
  """True when truncation uses the stored w_avg ('latent_avg': NVIDIA's tracked average) instead
  of the mean w of N_MEAN_LATENT sampled z (rosinality / Labels4Free)."""
  return config.get("truncation_center") == "w_avg"


def generator_params(trees: dict, path: Optional[str] = None):
  """The inference generator params: 'g_ema' when present, else 'g' (Labels4Free checkpoints)."""
  for name in ("g_ema", "g"):
    if name in trees:
      return trees[name]
  where = f"{path} " if path else ""
  raise WeightsError(f"weight directory {where}holds no generator ('g_ema' or 'g'); it has "
                     f"{sorted(trees)}")


def summarize_tree(tree) -> str:
  """'N tensors, M parameters' for a param tree, or the shape(s) for arrays / lists of arrays."""
  leaves = jax.tree.leaves(tree)
  if isinstance(tree, (list, tuple)):
    shapes = sorted({tuple(x.shape) for x in leaves})
    return f"{len(leaves)} arrays, shapes {list(shapes[0])} .. {list(shapes[-1])}"
  if not isinstance(tree, dict):
    return f"shape {list(np.shape(tree))}"
  n = sum(int(np.prod(np.shape(x))) for x in leaves)
  return f"{len(leaves)} tensors, {n:,} parameters"


# ----------------------------------------------------------------------------------------------
# The one loading path of every program: generator, alpha network and discriminator, with checks.


def fingerprint(tree) -> str:
  """Content fingerprint of a parameter tree: sha256 over its leaves' paths, shapes, dtypes and
  bytes (16 hex digits). Identifies a generator independently of where its directory lies."""
  import hashlib
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype};".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
  """A converted generator: its directory, config, weightless module, params and other trees."""
  path: str
  config: dict
  module: Generator
  params: Any
  trees: dict
  fingerprint: str

  @property
  def size(self) -> int:
    return self.module.size

  def discriminator(self, stddev_group: Optional[int] = None, **overrides) -> Discriminator:
    return discriminator_from_config(self.config, stddev_group, **overrides)

  def alpha_identity(self) -> dict:
    """What an alpha export stores about the generator it was trained on (checked on load)."""
    m = self.module
    table = channel_table(m.size, m.channel_multiplier, m.channel_base, m.channel_max)
    return {"size": self.size, "channels": {str(k): v for k, v in table.items()},
            "generator_fingerprint": self.fingerprint}


def with_flag(e: UserError, flag: str, path: str) -> UserError:
  """`e` with its message led by `flag=path` (a message that starts with the path names it once)."""
  msg = str(e)
  msg = f"{flag}={path}{msg[len(path):]}" if msg.startswith(path) else f"{flag}={path}: {msg}"
  return WeightsError(msg, detail=e.detail)


def load_generator(path: str, flag: str = "--generator", **overrides) -> LoadedGenerator:
  """Loads a generator weight directory; errors are one line naming `flag`."""
  try:
    config, trees = load_weights(path)
    params = generator_params(trees, path)
    module = generator_from_config(config, **overrides)
  except WeightsError as e:
    raise with_flag(e, flag, path) from None
  return LoadedGenerator(path=path, config=config, module=module, params=params, trees=trees,
                         fingerprint=fingerprint(params))


def load_alpha(path: str, gen: LoadedGenerator, flag: str = "--alpha"):
  """Loads an alpha network for `gen` (from an alpha export or a converted Labels4Free checkpoint)
  and checks that it was made for this generator (size, channel table and, when stored, the
  generator's content fingerprint)."""
  if os.path.abspath(path) == os.path.abspath(gen.path):
    config, trees = gen.config, gen.trees
  else:
    try:
      config, trees = load_weights(path, ALPHA_HINT)
    except WeightsError as e:
      raise with_flag(e, flag, path) from None
  if "alpha" not in trees:
    raise WeightsError(f"{flag}={path} holds no alpha network (it has {sorted(trees)}); pass a "
                       "training run's alpha/ export")
  want = gen.alpha_identity()
  if config.get("size", gen.size) != gen.size:
    raise WeightsError(f"{flag}={path} is for {config.get('size')} px but the generator "
                       f"{gen.path} is {gen.size} px; pass the alpha network trained on it")
  for key, what in (("channels", "channel table"), ("generator_fingerprint", "weights")):
    if key in config and config[key] != want[key]:
      raise WeightsError(f"{flag}={path} was trained on a generator with other {what} than "
                         f"{gen.path}; pass the alpha network trained on this generator")
  return trees["alpha"]


# ----------------------------------------------------------------------------------------------
# The student segmenter's export (written by experiments.train_student, read for inference).

SEGMENTER_KIND = "student_segmenter"
SEGMENTER_HINT = "train one with python -m experiments.train_student"


def is_segmenter(path: str) -> bool:
  try:
    return read_config(path).get("kind") == SEGMENTER_KIND
  except UserError:
    return False


@dataclasses.dataclass(frozen=True)
class LoadedSegmenter:
  """A loaded segmenter export: module, params, input size, hard-mask threshold and its config
  (architecture, training config, provenance)."""
  path: str
  module: UNet
  params: Any
  size: int
  threshold: float
  config: dict


def load_segmenter(path: str, flag: str = "--segmenter") -> LoadedSegmenter:
  try:
    config, trees = load_weights(path, SEGMENTER_HINT)
  except UserError as e:
    raise with_flag(e, flag, path) from None
  if config.get("kind") != SEGMENTER_KIND or "segmenter" not in trees:
    raise WeightsError(f"{flag}={path} is not a segmenter export (kind {config.get('kind')!r}); "
                       f"{SEGMENTER_HINT}")
  arch = SegmenterArch(**config["arch"])
  return LoadedSegmenter(path=path, module=arch.module(), params=trees["segmenter"],
                         size=int(config["size"]), threshold=float(config.get("threshold", 0.5)),
                         config=config)
