"""PyTorch checkpoints (rosinality StyleGAN2, official Labels4Free) and NVIDIA network snapshots
(stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2) -> Flax parameter trees.

Files are read by `io.torch_pickle`, a restricted unpickler: no torch, no NVIDIA code, nothing from
the file executed (torch's own loader is not used). Every expected key is checked against the
shape implied by the inferred config; missing, misshapen and unexpected keys raise a `UserError`
with one line naming the key. Known buffers (blur and upsample kernels) are ignored; the
generator's stored noise buffers are returned separately. NVIDIA snapshots: `system.nvidia`.

Layout changes (rosinality/stylegan2-pytorch, convert_weight.py and model.py): linear [o, i] -> [i, o]; conv [o, i, k, k] -> HWIO; modulated
conv [1, o, i, k, k] -> [k, k, i, o]; ToRGB bias [1, 3, 1, 1] -> [3]; constant [1, C, 4, 4] ->
[1, 4, 4, C]; noise buffer [1, 1, r, r] -> [1, r, r, 1]. Equalized-LR scales stay at runtime.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.models.alpha import alpha_levels, merge_names
from l4f_jax.models.stylegan2 import channel_table, noise_shapes, num_layers
from l4f_jax import errors
from l4f_jax.config import option
from l4f_jax.io import files, torch_pickle
from l4f_jax.system import nvidia, weights
from l4f_jax.errors import UserError

@dataclasses.dataclass(frozen=True)
class ConvertConfig:
  """The options of experiments.convert (`convert_file(**fields)`)."""
  src: str = option("", "PyTorch checkpoint (.pt) or NVIDIA network snapshot (.pkl) to "
                     "convert.", nonempty=True)
  dst: str = option("", "Output weight directory (must not exist).", nonempty=True)
  allow_pickle: bool = option(False, "No longer needed, accepted for old command lines: the "
                              "reader never runs code from the file and reads the training "
                              "'args' as plain attributes.")
  lr_mlp: float = option(0.01, "Mapping-network lr multiplier the generator used (rosinality "
                         "files; NVIDIA snapshots store theirs).", gt=0)
  size: Optional[int] = option(None, "Generator size, only for alpha-only files.", ge=4)
  overwrite: bool = option(False, "Replace an existing weight directory at --dst.")


# Config fields the Flax models take beyond rosinality's, with the values that reproduce it.
ROSINALITY_G = dict(conv_clamp=None, truncation_center="mean_latent")
ROSINALITY_D = dict(d_conv_clamp=None, d_stddev_group=4, d_stddev_feat=1)


# ------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str) -> Any:
  """Reads a PyTorch checkpoint or a network pickle with the restricted reader -> its object."""
  _check_src(path)
  try:
    return torch_pickle.read(path)
  except torch_pickle.Refused as e:
    msg = str(e)
    raise UserError(f"{path} {msg}" if msg.startswith(("asks for", "is ")) else
                    f"{path} cannot be read: {msg}") from None
  except UserError:
    raise
  except OSError as e:
    if errors.environment_error(e) is not None:
      raise
    raise UserError(f"{path} is not a PyTorch checkpoint (OSError: {_first_line(str(e), 80)})",
                    detail=str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  # any failure of the decoder
    raise UserError(f"{path} is not a PyTorch checkpoint or network pickle, or is truncated "
                    f"({type(e).__name__}: {_first_line(str(e), 80)})", detail=str(e)) from None


def _check_src(path: str) -> None:
  if not os.path.exists(path):
    raise UserError(f"--src {path} does not exist")
  if os.path.isdir(path):
    raise UserError(f"--src {path} is a directory; pass a PyTorch checkpoint file (.pt) or a "
                    "network snapshot (.pkl)")


def import_torch(purpose: str):
  """`import torch`, or one line saying what to install (the README's first command does not)."""
  try:
    import torch  # noqa: PLC0415  (lazy: only conversion and the references need torch)
  except ImportError:
    raise UserError(f"{purpose} needs PyTorch, which is not installed: pip install "
                    "torch==2.13.0 (the CPU wheel)") from None
  return torch


def nonfinite_tensors(ckpt: dict, keys) -> list[str]:
  """'entry/key' of every floating tensor of the state dicts `keys` of `ckpt` holding NaN or inf."""
  bad = []
  for entry in keys:
    sd = ckpt.get(entry)
    items = sd.items() if isinstance(sd, dict) else [("", sd)]
    for k, v in items:
      if hasattr(v, "dtype") and hasattr(v, "shape"):
        a = to_numpy(v)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
          bad.append(f"{entry}/{k}" if k else entry)
  return bad


def _first_line(msg: str, limit: int = 160) -> str:
  line = next((s.strip() for s in msg.splitlines() if s.strip()), "")
  return line[:limit]


def to_numpy(t) -> np.ndarray:
  """A torch tensor (or array-like) -> NumPy array with the same dtype."""
  if hasattr(t, "detach"):
    t = t.detach().cpu().numpy()
  return np.array(t)


def strip_prefix(sd: dict, prefix: str = "module.") -> dict:
  """Removes a DDP `module.` prefix when every key carries it."""
  if sd and all(k.startswith(prefix) for k in sd):
    return {k[len(prefix):]: v for k, v in sd.items()}
  return dict(sd)


# ------------------------------------------------------------------------------------------------
# Expected layouts: torch key -> (torch shape, flax path, transform)

_T = {
    "id": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "modconv": lambda a: a[0].transpose(2, 3, 1, 0),
    "rgb_bias": lambda a: a.reshape(3),
    "const": lambda a: a.transpose(0, 2, 3, 1),
    "noise": lambda a: a.transpose(0, 2, 3, 1),
}
Layout = dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]


def _shape(a) -> list[int]:
  return list(getattr(a, "shape", np.shape(a)))


def _apply_layout(sd: dict, layout: Layout, what: str, ignore: Callable[[str], bool],
                  optional: Callable[[str], bool] = lambda k: False,
                  display: Optional[dict] = None) -> tuple[dict, dict]:
  """Checks `sd` against `layout`; returns (flax tree of the non-optional keys, optional arrays)."""
  name = (lambda k: (display or {}).get(k, k))
  missing = [k for k in layout if k not in sd and not optional(k)]
  if missing:
    k = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise UserError(f"{what}: missing key '{name(k)}' (expected shape "
                    f"{list(layout[k][0])}){more}")
  unexpected = [k for k in sd if k not in layout and not ignore(k)]
  if unexpected:
    k = unexpected[0]
    more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
    raise UserError(f"{what}: unexpected key '{name(k)}' with shape {_shape(sd[k])}{more}; "
                    f"the inferred config does not use it")
  tree, extra = {}, {}
  for k, (shape, path, kind) in layout.items():
    if k not in sd:
      continue
    if tuple(_shape(sd[k])) != tuple(shape):
      raise UserError(f"{what}: key '{name(k)}' has shape {_shape(sd[k])}, the inferred config "
                      f"expects {list(shape)}")
    arr = _T[kind](to_numpy(sd[k]))
    if optional(k):
      extra[k] = arr
      continue
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(arr)
  return tree, extra


def _count(sd: dict, pattern: str) -> list[int]:
  rx = re.compile(pattern)
  return sorted({int(m.group(1)) for k in sd for m in [rx.fullmatch(k)] if m})


def generator_layout(size: int, style_dim: int, n_mlp: int, ch: dict[int, int]) -> Layout:
  """rosinality Generator state_dict keys (params + noise buffers) with shapes and Flax paths."""
  lay: Layout = {}

  def lin(prefix, torch_prefix, cin, cout):
    lay[f"{torch_prefix}.weight"] = ((cout, cin), prefix + ("weight",), "linear")
    lay[f"{torch_prefix}.bias"] = ((cout,), prefix + ("bias",), "id")

  def modconv(prefix, tp, cin, cout, k):
    lay[f"{tp}.conv.weight"] = ((1, cout, cin, k, k), prefix + ("conv", "weight"), "modconv")
    lin(prefix + ("conv", "modulation"), f"{tp}.conv.modulation", style_dim, cin)

  def styled(prefix, tp, cin, cout):
    modconv(prefix, tp, cin, cout, 3)
    lay[f"{tp}.noise.weight"] = ((1,), prefix + ("noise", "weight"), "id")
    lay[f"{tp}.activate.bias"] = ((cout,), prefix + ("activate", "bias"), "id")

  def to_rgb(prefix, tp, cin):
    modconv(prefix, tp, cin, 3, 1)
    lay[f"{tp}.bias"] = ((1, 3, 1, 1), prefix + ("bias",), "rgb_bias")

  for i in range(1, n_mlp + 1):
    lin((f"style_{i}",), f"style.{i}", style_dim, style_dim)
  lay["input.input"] = ((1, ch[4], 4, 4), ("input", "input"), "const")
  styled(("conv1",), "conv1", ch[4], ch[4])
  to_rgb(("to_rgb1",), "to_rgb1", ch[4])
  for k in range(int(math.log2(size)) - 2):
    r = 2 ** (k + 3)
    ci, co = ch[r // 2], ch[r]
    styled((f"convs_{2 * k}",), f"convs.{2 * k}", ci, co)
    styled((f"convs_{2 * k + 1}",), f"convs.{2 * k + 1}", co, co)
    to_rgb((f"to_rgbs_{k}",), f"to_rgbs.{k}", co)
  for j, (_, r, _, _) in enumerate(noise_shapes(size)):
    lay[f"noises.noise_{j}"] = ((1, 1, r, r), ("noises", str(j)), "noise")
  return lay


def discriminator_layout(size: int, ch: dict[int, int]) -> Layout:
  """rosinality Discriminator state_dict parameter keys with shapes and Flax paths."""
  lay: Layout = {}

  def conv(prefix, tp, cin, cout, k, bias_idx=None):
    lay[f"{tp}.weight"] = ((cout, cin, k, k), prefix + ("conv", "weight"), "conv")
    if bias_idx is not None:
      lay[f"{bias_idx}.bias"] = ((cout,), prefix + ("activate", "bias"), "id")

  conv(("convs_0",), "convs.0.0", 3, ch[size], 1, "convs.0.1")
  log_size = int(math.log2(size))
  for n, i in enumerate(range(log_size, 2, -1), start=1):
    ci, co = ch[2 ** i], ch[2 ** (i - 1)]
    p = (f"convs_{n}",)
    conv(p + ("conv1",), f"convs.{n}.conv1.0", ci, ci, 3, f"convs.{n}.conv1.1")
    conv(p + ("conv2",), f"convs.{n}.conv2.1", ci, co, 3, f"convs.{n}.conv2.2")
    conv(p + ("skip",), f"convs.{n}.skip.1", ci, co, 1)
  conv(("final_conv",), "final_conv.0", ch[4] + 1, ch[4], 3, "final_conv.1")
  lay["final_linear.0.weight"] = ((ch[4], ch[4] * 16), ("final_linear_0", "weight"), "linear")
  lay["final_linear.0.bias"] = ((ch[4],), ("final_linear_0", "bias"), "id")
  lay["final_linear.1.weight"] = ((1, ch[4]), ("final_linear_1", "weight"), "linear")
  lay["final_linear.1.bias"] = ((1,), ("final_linear_1", "bias"), "id")
  return lay


def alpha_layout(size: int, ch: dict[int, int]) -> Layout:
  """Official `bg_extractor_repro` keys (conv1.., conv_next.., conv_n), shapes, Flax paths."""
  n, min_res = alpha_levels(size)
  lay: Layout = {}

  def conv(name, cin, cout):
    lay[f"{name}.weight"] = ((cout, cin, 1, 1), (name, "weight"), "conv")
    lay[f"{name}.bias"] = ((cout,), (name, "bias"), "id")

  for k in range(n):
    conv(f"conv{2 * k + 1}", ch[min_res * 2 ** k], 3)
    conv(f"conv{2 * k + 2}", ch[min_res * 2 ** k], 3)
  for name in merge_names(n):
    conv(name, 12, 6)
  conv("conv_n", 6, 1)
  return lay


# ------------------------------------------------------------------------------------------------
# Config inference


def channel_fields(ch: dict[int, int], size: int, what: str = "state_dict") -> dict:
  """Channel table -> {channel_multiplier, channel_base, channel_max} reproducing it exactly."""
  for cm in (2, 1):
    if channel_table(size, cm) == ch:
      return dict(channel_multiplier=cm, channel_base=None, channel_max=512)
  cmax = max(ch.values())
  lo, hi = 0, math.inf
  for r, c in ch.items():
    if c < cmax:
      lo, hi = max(lo, c * r), min(hi, (c + 1) * r - 1)
    else:
      lo = max(lo, cmax * r)
  if lo <= hi and channel_table(size, channel_base=lo, channel_max=cmax) == ch:
    return dict(channel_multiplier=None, channel_base=int(lo), channel_max=int(cmax))
  table = ", ".join(f"{r}: {c}" for r, c in sorted(ch.items()))
  raise UserError(f"{what}: channel table {{{table}}} is neither rosinality's "
                  f"(channel_multiplier 1 or 2) nor min(channel_base // res, channel_max); it "
                  f"cannot be represented")


def _table(fields: dict, size: int) -> dict[int, int]:
  return channel_table(size, fields.get("channel_multiplier") or 2, fields.get("channel_base"),
                       fields.get("channel_max", 512))


def _need(sd: dict, key: str, what: str, ndim: int):
  if key not in sd:
    raise UserError(f"{what}: missing key '{key}'; is this the right state_dict?")
  shape = _shape(sd[key])
  if len(shape) != ndim:
    raise UserError(f"{what}: key '{key}' has shape {shape}, expected {ndim} dimensions")
  return shape


def convert_generator(sd: dict, what: str = "generator") -> tuple[dict, dict, Optional[list]]:
  """rosinality Generator state_dict -> (config fields, Flax params, stored noises or None).

  Infers size (from the to_rgbs count), style_dim, n_mlp (style.* weights) and the channel table.
  The noises are the `noises.noise_j` buffers as [1, r, r, 1] (None if the state_dict has none).
  """
  sd = strip_prefix(sd)
  rgbs = _count(sd, r"to_rgbs\.(\d+)\.bias")
  if not rgbs:
    raise UserError(f"{what}: no 'to_rgbs.*' keys; not a rosinality StyleGAN2 generator "
                    f"state_dict (keys start {sorted(sd)[:3]})")
  size = 2 ** (len(rgbs) + 2)
  style_dim = _need(sd, "style.1.weight", what, 2)[0]
  n_mlp = len(_count(sd, r"style\.(\d+)\.weight"))
  ch = {4: _need(sd, "input.input", what, 4)[1]}
  for k in range(len(rgbs)):
    ch[2 ** (k + 3)] = _need(sd, f"convs.{2 * k}.conv.weight", what, 5)[1]
  fields = dict(size=size, style_dim=style_dim, n_mlp=n_mlp, **channel_fields(ch, size, what))
  lay = generator_layout(size, style_dim, n_mlp, ch)
  buffers = re.compile(r".*\.(blur|upsample)\.kernel")
  params, extra = _apply_layout(sd, lay, what, ignore=buffers.fullmatch,
                                optional=lambda k: k.startswith("noises."))
  noises = None
  if extra:
    keys = [f"noises.noise_{j}" for j in range(num_layers(size))]
    absent = [k for k in keys if k not in extra]
    if absent:
      raise UserError(f"{what}: missing key '{absent[0]}' (the other noise buffers are present)")
    noises = [extra[k] for k in keys]
  return fields, params, noises


def convert_discriminator(sd: dict, size: Optional[int] = None,
                          what: str = "discriminator") -> tuple[dict, dict]:
  """rosinality Discriminator state_dict -> (channel config fields + size, Flax params)."""
  sd = strip_prefix(sd)
  blocks = _count(sd, r"convs\.(\d+)\.conv1\.0\.weight")
  inferred = 2 ** (len(blocks) + 2)
  if size is None:
    size = inferred
  if not blocks or blocks != list(range(1, len(blocks) + 1)):
    raise UserError(f"{what}: no 'convs.N.conv1.0.weight' residual blocks; not a rosinality "
                    f"StyleGAN2 discriminator state_dict")
  if inferred != size:
    raise UserError(f"{what}: has {len(blocks)} residual blocks ({inferred} px) but the "
                    f"generator is {size} px")
  ch = {size: _need(sd, "convs.0.0.weight", what, 4)[0],
        4: _need(sd, "final_conv.0.weight", what, 4)[0]}
  for n in range(1, len(blocks) + 1):
    ch[size // 2 ** n] = _need(sd, f"convs.{n}.conv2.1.weight", what, 4)[0]
  fields = dict(size=size, **channel_fields(ch, size, what))
  buffers = re.compile(r"convs\.\d+\.(conv2|skip)\.0\.kernel")
  params, _ = _apply_layout(sd, discriminator_layout(size, ch), what, ignore=buffers.fullmatch)
  return fields, params


def nonrepro_to_repro(key: str) -> str:
  """`bg_extractor` names -> `bg_extractor_repro` names (conv_fns0.k -> conv{2k+1}, ...)."""
  m = re.fullmatch(r"conv_fns([01])\.(\d+)\.(\w+)", key)
  if m:
    return f"conv{2 * int(m.group(2)) + int(m.group(1)) + 1}.{m.group(3)}"
  m = re.fullmatch(r"conv_merge_fns\.(\d+)\.(\w+)", key)
  if m:
    j = int(m.group(1))
    return f"{'conv_next' if j == 0 else f'conv_next{j + 1}'}.{m.group(2)}"
  return key


def repro_to_nonrepro(key: str) -> str:
  """`bg_extractor_repro` names -> `bg_extractor` names (inverse of `nonrepro_to_repro`)."""
  m = re.fullmatch(r"conv(\d+)\.(\w+)", key)
  if m:
    i = int(m.group(1)) - 1
    return f"conv_fns{i % 2}.{i // 2}.{m.group(2)}"
  m = re.fullmatch(r"conv_next(\d*)\.(\w+)", key)
  if m:
    return f"conv_merge_fns.{int(m.group(1) or 1) - 1}.{m.group(2)}"
  return key


def _alpha_candidates(sd: dict, n_first: int) -> list[tuple[int, dict]]:
  """(size, channel fields) whose alpha layout matches the per-level widths in `sd`."""
  widths = [_shape(sd.get(f"conv{2 * k + 1}.weight", np.zeros((0, 0))))[1] for k in range(n_first)]
  out = []
  for size in (2 ** i for i in range(4, 13)):
    n, min_res = alpha_levels(size)
    if n != n_first:
      continue
    for cm in (2, 1):
      ch = channel_table(size, cm)
      if [ch[min_res * 2 ** k] for k in range(n)] == widths:
        out.append((size, dict(channel_multiplier=cm, channel_base=None, channel_max=512)))
        break
  return out


def convert_alpha(sd: dict, config: Optional[dict] = None, size: Optional[int] = None,
                  what: str = "alpha") -> tuple[dict, dict]:
  """Official Labels4Free alpha state_dict -> (info, AlphaNetwork params).

  Accepts `bg_extractor_repro` names and `bg_extractor` names (conv_fns0/1.k, conv_merge_fns.j),
  with or without a DDP `module.` prefix. `config` (size and channel fields of the generator) gives
  the expected widths; without it the size (and a rosinality channel table) is inferred from the
  keys when that is unambiguous, optionally restricted to `size`.
  info: {'size', 'names': 'repro' | 'bg_extractor', plus inferred channel fields when no config}.
  """
  sd = strip_prefix(sd)
  nonrepro = any(k.startswith(("conv_fns", "conv_merge_fns")) for k in sd)
  mapped, display = {}, {}
  for k, v in sd.items():
    r = nonrepro_to_repro(k)
    if r in mapped:
      raise UserError(f"{what}: keys '{display[r]}' and '{k}' name the same parameter")
    mapped[r], display[r] = v, k
  n_first = len(_count(mapped, r"conv(\d+)\.weight")) // 2
  info = dict(names="bg_extractor" if nonrepro else "repro")
  if config is not None and config.get("size"):
    size = int(config["size"])
    ch = _table(config, size)
  else:
    cands = [c for c in _alpha_candidates(mapped, n_first) if size in (None, c[0])]
    if len({s for s, _ in cands}) != 1:
      sizes = sorted({s for s, _ in cands})
      hint = "pass --size" if sizes else "convert it together with its generator"
      raise UserError(f"{what}: cannot infer the generator size and widths from the alpha "
                      f"weights alone (candidates {sizes}); {hint}")
    size, fields = cands[0]
    ch = channel_table(size, fields["channel_multiplier"])
    info.update(fields)
  info["size"] = size
  try:
    lay = alpha_layout(size, ch)
  except ValueError as e:
    raise UserError(f"{what}: {e}") from None
  rename = repro_to_nonrepro if nonrepro else (lambda k: k)
  params, _ = _apply_layout(mapped, lay, what, ignore=lambda k: False,
                            display={k: rename(k) for k in lay} | display)
  return info, params


def describe_keys(obj: Any) -> str:
  """Short description of a checkpoint entry for the converter's report."""
  if isinstance(obj, dict):
    return f"state_dict, {len(obj)} entries"
  if hasattr(obj, "shape"):
    return f"tensor {list(obj.shape)}"
  return type(obj).__name__


# ------------------------------------------------------------------------------------------------
# Whole checkpoints

GENERATOR_KEYS = ("g_ema", "g")
ALPHA_KEYS = ("bg_extractor_ema", "bg_extractor")
IGNORED_KEYS = ("g_optim", "d_optim", "args", "ada_aug_p")


def convert_checkpoint(ckpt: dict, lr_mlp: float = 0.01,
                       size: Optional[int] = None) -> tuple[dict, dict, list[str]]:
  """A rosinality or Labels4Free checkpoint dict -> (config, trees, report lines).

  Reads 'g_ema' and 'g' (Labels4Free files hold the pretrained generator under 'g' only), 'd',
  'latent_avg' ([style_dim] -> [1, style_dim]) and the alpha network from 'bg_extractor_ema' (the
  raw A weights, preferred) or 'bg_extractor' (DDP `module.` prefix stripped). The stored noise
  buffers come from the first generator converted. `size` is needed only for alpha-only files
  whose size is ambiguous.
  """
  known = GENERATOR_KEYS + ALPHA_KEYS + ("d", "latent_avg") + IGNORED_KEYS
  report = [f"found {k}: {describe_keys(v)}" + ("" if k in known else " (ignored)")
            for k, v in ckpt.items()]
  config: dict = {}
  trees: dict = {}
  for name in GENERATOR_KEYS:
    if name not in ckpt:
      continue
    fields, params, noises = convert_generator(_state_dict(ckpt, name), what=name)
    if config and fields != config:
      raise UserError(f"'{name}' has config {fields}, but '{GENERATOR_KEYS[0]}' has {config}")
    config = fields
    trees[name] = params
    if noises is not None and "noises" not in trees:
      trees["noises"] = noises
  if config:
    config["lr_mlp"] = float(lr_mlp)
    config.update(ROSINALITY_G)
    if size is not None and size != config["size"]:
      raise UserError(f"--size={size} but the generator is {config['size']} px; drop --size")
  if "d" in ckpt:
    fields, trees["d"] = convert_discriminator(_state_dict(ckpt, "d"),
                                               config.get("size", size), what="d")
    config.update(ROSINALITY_D)
    for k, v in fields.items():
      if config.get(k, v) != v:
        raise UserError(f"'d' has {k}={v}, but the generator has {k}={config[k]}")
      config.setdefault(k, v)
  if "latent_avg" in ckpt:
    w = to_numpy(ckpt["latent_avg"]).reshape(1, -1)
    if "style_dim" in config and w.shape[1] != config["style_dim"]:
      raise UserError(f"'latent_avg' has shape {list(w.shape)}, expected "
                      f"[1, {config['style_dim']}] (the generator's style_dim)")
    trees["latent_avg"] = w
  alpha_key = next((k for k in ALPHA_KEYS if k in ckpt), None)
  if alpha_key:
    info, trees["alpha"] = convert_alpha(_state_dict(ckpt, alpha_key), config or None,
                                         size=size, what=alpha_key)
    for k in ("size", "channel_multiplier", "channel_base", "channel_max"):
      if k in info:
        config.setdefault(k, info[k])
    config["alpha_names"] = info["names"]
    config["alpha_source"] = alpha_key
    prefixed = any(k.startswith("module.") for k in ckpt[alpha_key])
    report.append(f"alpha <- '{alpha_key}' ({info['names']} names"
                  f"{', module. prefix stripped' if prefixed else ''})")
  if not trees:
    raise UserError(f"no convertible entry: expected one of {list(known[:6])}, found "
                    f"{sorted(ckpt)}")
  return config, trees, report


def _state_dict(ckpt: dict, key: str) -> dict:
  sd = ckpt[key]
  if not isinstance(sd, dict):
    raise UserError(f"'{key}' is a {type(sd).__name__}, not a state_dict")
  return sd


def convert_nvidia(snap: dict, lr_mlp: Optional[float] = None) -> tuple[dict, dict, list[str]]:
  """An NVIDIA network snapshot -> (config, trees, report lines); the trees are checked against
  the Flax models the config builds (structure and every shape)."""
  fields, trees, report, ch = nvidia.convert_snapshot(snap)
  size = fields["size"]
  config = dict(fields, **channel_fields(ch, size, "G_ema"))
  config.setdefault("truncation_center", "mean_latent")
  if lr_mlp is not None and not math.isclose(lr_mlp, config["lr_mlp"], rel_tol=1e-6):
    report.append(f"--lr_mlp={lr_mlp:g} not used: the snapshot stores {config['lr_mlp']:g}")
  models = {"g_ema": weights.generator_from_config(config)}
  if "d" in trees:
    models["d"] = weights.discriminator_from_config(config)
  for name, model in models.items():
    args = ((jnp.zeros((1, model.style_dim)),) if name == "g_ema" else
            (jnp.zeros((4, size, size, 3)),))
    kw = {"noise_key": jax.random.key(0)} if name == "g_ema" else {}
    want = jax.eval_shape(lambda a, m=model, k=kw: m.init(jax.random.key(0), *a, **k),
                          args)["params"]
    bad = jax.tree.structure(want) != jax.tree.structure(trees[name]) or any(
        tuple(a.shape) != np.shape(b)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(trees[name])))
    if bad:
      raise UserError(f"the snapshot's {name} does not map onto the Flax model (structure or "
                      "shapes differ); not a StyleGAN2 network this converter knows")
  return config, trees, report


def convert_file(src: str, dst: str, allow_pickle: bool = False, lr_mlp: float = 0.01,
                 size: Optional[int] = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """Converts `src` into the weight directory `dst`; returns (config, trees). Logs via `log`.
  `allow_pickle` is accepted and unused (the restricted reader never runs code)."""
  del allow_pickle
  dst = os.path.abspath(dst)
  if os.path.lexists(dst) and not overwrite:
    raise UserError(f"--dst {dst} already exists; choose a new --dst or pass "
                    f"--overwrite")
  _check_src(src)
  files.check_writable_dir(dst, "--dst")
  files.check_disjoint(dst, [("--src", src)], "--dst")
  ckpt = load_checkpoint(src)
  if isinstance(ckpt, torch_pickle.PersistentObject):  # a pickled network on its own
    ckpt = {"G_ema" if ckpt.class_name == "Generator" else ckpt.class_name: ckpt}
  if nvidia.is_snapshot(ckpt):
    try:
      config, trees, report = convert_nvidia(ckpt, lr_mlp if lr_mlp != 0.01 else None)
    except UserError as e:
      raise UserError(f"{src}: {e}", detail=e.detail) from None
  else:
    config, trees, report = _convert_torch(ckpt, src, lr_mlp, size)
  for line in report:
    log(line)
  config["source"] = os.path.basename(src)
  weights.save_weights(dst, config, trees, overwrite=overwrite)
  fields = ", ".join(f"{k}={config[k]}" for k in weights.MODEL_KEYS if config.get(k) is not None)
  log(f"wrote {dst} ({fields})")
  for name in weights.TREE_NAMES:
    if name in trees:
      log(f"  {name}: {weights.summarize_tree(trees[name])}")
  return config, trees


def _convert_torch(ckpt: Any, src: str, lr_mlp: float, size: Optional[int]):
  if not isinstance(ckpt, dict):
    raise UserError(f"{src} holds a {type(ckpt).__name__}, not a checkpoint dict with "
                    f"'g_ema' / 'g' / 'd' / 'bg_extractor_ema' or an NVIDIA network snapshot")
  used = [k for k in GENERATOR_KEYS + ALPHA_KEYS + ("d", "latent_avg") if k in ckpt]
  bad = nonfinite_tensors(ckpt, used)
  if bad:
    more = f" and {len(bad) - 2} more" if len(bad) > 2 else ""
    raise UserError(f"{src} holds non-finite tensors ({', '.join(bad[:2])}{more}); convert a "
                    "checkpoint from before the run diverged")
  return convert_checkpoint(ckpt, lr_mlp=lr_mlp, size=size)
