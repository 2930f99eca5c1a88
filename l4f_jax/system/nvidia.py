"""NVIDIA network snapshots (stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2) -> rosinality-named
Flax trees and the weight config that reproduces NVIDIA's forward pass.

A snapshot (`network-snapshot-*.pkl`, written by `training/training_loop.py`) is a dict of
persistent modules ('G', 'D', 'G_ema', 'augment_pipe') and 'training_set_kwargs'; it is read by
`io.torch_pickle` (no NVIDIA code, module sources never executed). Facts used, from
NVlabs/stylegan2-ada-pytorch `training/networks.py` (the stylegan3 repository's
`training/networks_stylegan2.py` holds the same classes):

- MappingNetwork: `fc{i}` FullyConnectedLayers, weight [out, in] stored as rosinality stores it
  (N(0,1) / lr), gains lr / sqrt(in) and lr (`weight_gain`, `bias_gain`: the stored learning-rate
  multiplier); lrelu * sqrt(2). `w_avg` buffer: the truncation centre, `w_avg.lerp(w, psi)`.
- SynthesisLayer: `affine` (bias_init 1, lr 1: rosinality's `modulation`), `weight` [O, I, k, k]
  WITHOUT the 1 / sqrt(I k k) factor (demodulation cancels it): rosinality's parameter is
  weight * sqrt(I k k). `noise_strength` (scalar) = rosinality's noise weight; `noise_const`
  [r, r] the fixed noise of noise_mode='const'. `bias`, lrelu * sqrt(2), then clamp at
  `conv_clamp` (bias_act's clamp).
- ToRGBLayer: styles * 1 / sqrt(C) (rosinality scales the weight: the same product, so the weight
  maps as it is); bias, then clamp at `conv_clamp`, then the sum with the upsampled image.
- SynthesisBlock b4 (`const`, conv1, torgb), b8.. (conv0 up 2, conv1, torgb): rosinality's
  input / conv1 / to_rgb1 and convs 2k, 2k+1 / to_rgbs k, with the same w indices and the same noise
  order. Only architecture 'skip' (config-f) is rosinality's.
- Discriminator (architecture 'resnet'): b{size}.fromrgb, blocks conv0 / conv1 (down 2, gain
  sqrt(1/2)) / skip (gain sqrt(1/2), no bias), epilogue b4: mbstd (group_size, num_channels),
  conv, fc, out. Rosinality's ResBlock divides the sum by sqrt(2) instead (the same result).
- fp16 blocks (`use_fp16`, `num_fp16_res`): the Flax model computes them in float32, as NVIDIA's
  forward with `force_fp32=True` does (tests/data/nvidia/*.json record how far NVIDIA's own fp16
  forward on CPU lands from it).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from l4f_jax.errors import UserError
from l4f_jax.io.torch_pickle import PersistentObject

FILTER = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0  # setup_filter([1, 3, 3, 1]): rosinality's
NOT_ROSINALITY = "rosinality's StyleGAN2 (config-f) cannot express it"


def is_snapshot(obj: Any) -> bool:
  """True for a dict holding NVIDIA persistent modules (a network snapshot)."""
  return isinstance(obj, dict) and any(isinstance(v, PersistentObject) for v in obj.values())


class _Mod:
  """A persistent module with its path, for one-line errors naming the tensor."""

  def __init__(self, obj: Any, path: str):
    if not isinstance(obj, PersistentObject):
      raise UserError(f"{path} is a {type(obj).__name__}, not an NVIDIA network module")
    self.obj, self.path = obj, path

  @property
  def cls(self) -> str:
    return self.obj.class_name

  def has(self, name: str) -> bool:
    return self.obj.child(name) is not None

  def sub(self, name: str) -> "_Mod":
    if not self.has(name):
      raise UserError(f"{self.path} has no submodule '{name}'; not a StyleGAN2 network of "
                      "stylegan2-ada-pytorch or stylegan3 (--cfg=stylegan2)")
    return _Mod(self.obj.child(name), f"{self.path}.{name}")

  def attr(self, name: str, default: Any = None) -> Any:
    return self.obj.attr(name, default)

  def tensor(self, name: str, ndim: Optional[int] = None) -> Optional[np.ndarray]:
    t = self.obj.tensors("_parameters").get(name)
    if t is None:
      t = self.obj.tensors("_buffers").get(name)
    if t is not None and ndim is not None and np.ndim(t) != ndim:
      raise UserError(f"{self.path}.{name} has shape {list(np.shape(t))}, expected {ndim} dims")
    return None if t is None else np.asarray(t, np.float32)

  def need(self, name: str, ndim: int) -> np.ndarray:
    t = self.tensor(name, ndim)
    if t is None:
      raise UserError(f"{self.path} has no tensor '{name}'")
    return t

  def expect(self, name: str, ok, what: str) -> Any:
    value = self.attr(name)
    if not ok(value):
      raise UserError(f"{self.path}: {name}={value!r} ({what}); {NOT_ROSINALITY}")
    return value


def _fc(m: _Mod, lr: float = 1.0, activation: str = "lrelu") -> dict:
  """FullyConnectedLayer -> EqualLinear params {weight [in, out], bias}."""
  m.expect("activation", lambda a: a == activation, f"rosinality uses {activation} here")
  m.expect("bias_gain", lambda g: g is not None and math.isclose(float(g), lr, rel_tol=1e-6),
           f"the learning-rate multiplier is {lr} here")
  return {"weight": np.ascontiguousarray(m.need("weight", 2).T), "bias": m.need("bias", 1)}


def _filter(m: _Mod) -> None:
  f = m.tensor("resample_filter")
  if f is not None and (f.shape != FILTER.shape or not np.allclose(f, FILTER, atol=1e-7)):
    raise UserError(f"{m.path}: resample_filter is not [1, 3, 3, 1]; {NOT_ROSINALITY}")


def _modconv(m: _Mod, gain: bool) -> dict:
  w = m.need("weight", 4)  # [O, I, k, k]
  if gain:
    w = w * np.float32(math.sqrt(w.shape[1] * w.shape[2] * w.shape[3]))
  return {"weight": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "modulation": _fc(
      m.sub("affine"), activation="linear")}


def _synthesis_layer(m: _Mod, clamps: set) -> tuple[dict, np.ndarray]:
  """SynthesisLayer -> StyledConv params and its noise_const [1, r, r, 1]."""
  m.expect("activation", lambda a: a == "lrelu", "rosinality uses lrelu")
  m.expect("use_noise", bool, "rosinality's layers all take noise")
  if m.need("weight", 4).shape[2:] != (3, 3):
    raise UserError(f"{m.path}.weight is not 3x3; {NOT_ROSINALITY}")
  _filter(m)
  clamps.add(m.attr("conv_clamp"))
  params = {"conv": _modconv(m, gain=True),
            "noise": {"weight": m.need("noise_strength", 0).reshape(1)},
            "activate": {"bias": m.need("bias", 1)}}
  return params, m.need("noise_const", 2)[None, :, :, None]


def _to_rgb(m: _Mod, clamps: set) -> dict:
  c = m.need("weight", 4).shape[1]
  m.expect("weight_gain", lambda g: g is not None and math.isclose(float(g), 1 / math.sqrt(c),
                                                                   rel_tol=1e-6), "1x1 ToRGB")
  clamps.add(m.attr("conv_clamp"))
  return {"conv": _modconv(m, gain=False), "bias": m.need("bias", 1)}


def _check_generator(G: _Mod) -> tuple[_Mod, int, int]:
  """Refusals of what rosinality's G cannot express; returns (synthesis, size, w_dim)."""
  c_dim = G.attr("c_dim", 0) or 0
  if c_dim:
    raise UserError(f"{G.path} is a conditional generator (c_dim={c_dim}): not supported "
                    "(Labels4Free's G takes no label); convert an unconditional one")
  syn = G.sub("synthesis")
  if syn.has("input") or not syn.has("b4"):
    raise UserError(f"{G.path} is a StyleGAN3 (-t / -r) generator, not StyleGAN2; convert a "
                    "stylegan2-ada-pytorch or stylegan3 --cfg=stylegan2 snapshot")
  z_dim, w_dim = G.attr("z_dim"), G.attr("w_dim")
  if z_dim != w_dim:
    raise UserError(f"{G.path}: z_dim={z_dim} differs from w_dim={w_dim}; {NOT_ROSINALITY}")
  if G.attr("img_channels", 3) != 3:
    raise UserError(f"{G.path}: img_channels={G.attr('img_channels')}; only RGB is supported")
  size = int(syn.attr("img_resolution"))
  if size < 8 or size & (size - 1):
    raise UserError(f"{G.path}: img_resolution={size} is not a power of two >= 8")
  return syn, size, int(w_dim)


def convert_generator(G: _Mod) -> tuple[dict, dict, list, np.ndarray, dict]:
  """-> (config fields, Flax params, noise_const maps, w_avg [1, w_dim], channel table)."""
  syn, size, w_dim = _check_generator(G)
  mapping = G.sub("mapping")
  if mapping.has("embed"):
    raise UserError(f"{mapping.path} embeds class labels; conditional generators are not "
                    "supported")
  n_mlp = int(mapping.attr("num_layers"))
  lr = float(mapping.sub("fc0").attr("bias_gain"))
  params = {f"style_{i + 1}": _fc(mapping.sub(f"fc{i}"), lr) for i in range(n_mlp)}
  for i in range(n_mlp):
    if params[f"style_{i + 1}"]["weight"].shape != (w_dim, w_dim):
      raise UserError(f"{mapping.path}.fc{i} is not {w_dim} -> {w_dim}; {NOT_ROSINALITY}")
  w_avg = mapping.tensor("w_avg", 1)
  clamps, noises, ch, fp16 = set(), [], {}, []
  for k, r in enumerate(2 ** i for i in range(2, int(math.log2(size)) + 1)):
    b = syn.sub(f"b{r}")
    b.expect("architecture", lambda a: a == "skip", "rosinality's G is the 'skip' architecture")
    _filter(b)
    if b.attr("use_fp16"):
      fp16.append(r)
    if r == 4:
      const = b.need("const", 3)
      ch[4] = const.shape[0]
      params["input"] = {"input": np.ascontiguousarray(const[None].transpose(0, 2, 3, 1))}
      params["conv1"], n0 = _synthesis_layer(b.sub("conv1"), clamps)
      params["to_rgb1"] = _to_rgb(b.sub("torgb"), clamps)
      noises.append(n0)
      continue
    b.sub("conv0").expect("up", lambda u: u == 2, "rosinality upsamples by 2 in the first conv")
    params[f"convs_{2 * k - 2}"], n0 = _synthesis_layer(b.sub("conv0"), clamps)
    params[f"convs_{2 * k - 1}"], n1 = _synthesis_layer(b.sub("conv1"), clamps)
    params[f"to_rgbs_{k - 1}"] = _to_rgb(b.sub("torgb"), clamps)
    noises += [n0, n1]
    ch[r] = params[f"convs_{2 * k - 1}"]["conv"]["weight"].shape[3]
  fields = dict(size=size, style_dim=w_dim, n_mlp=n_mlp, lr_mlp=lr,
                conv_clamp=_one_clamp(clamps, G.path), fp16_resolutions=fp16)
  w_avg = None if w_avg is None else w_avg.reshape(1, w_dim)
  return fields, params, noises, w_avg, ch


def _one_clamp(clamps: set, path: str) -> Optional[float]:
  if len(clamps) != 1:
    raise UserError(f"{path}: layers clamp at different values {sorted(map(str, clamps))}; "
                    f"{NOT_ROSINALITY}")
  c = clamps.pop()
  return None if c is None else float(c)


def _conv(m: _Mod, clamps: Optional[set], activation: str = "lrelu", bias: bool = True) -> dict:
  """Conv2dLayer -> rosinality ConvLayer params {conv: {weight}, activate: {bias}}."""
  m.expect("activation", lambda a: a == activation, f"rosinality uses {activation} here")
  _filter(m)
  w = m.need("weight", 4)
  out = {"conv": {"weight": np.ascontiguousarray(w.transpose(2, 3, 1, 0))}}
  if bias:
    out["activate"] = {"bias": m.need("bias", 1)}
  if clamps is not None:
    clamps.add(m.attr("conv_clamp"))
  return out


def convert_discriminator(D: _Mod, size: int) -> tuple[dict, dict, dict]:
  """-> (config fields d_*, Flax params, channel table)."""
  if D.attr("c_dim", 0):
    raise UserError(f"{D.path} is a conditional discriminator (c_dim={D.attr('c_dim')}); "
                    "conditional networks are not supported")
  if D.attr("img_resolution") != size:
    raise UserError(f"{D.path} is for {D.attr('img_resolution')} px but G_ema makes {size} px")
  clamps: set = set()
  params, ch = {}, {}
  for n, r in enumerate([2 ** i for i in range(int(math.log2(size)), 2, -1)], start=1):
    b = D.sub(f"b{r}")
    b.expect("architecture", lambda a: a == "resnet", "rosinality's D is the 'resnet' one")
    if r == size:
      params["convs_0"] = _conv(b.sub("fromrgb"), clamps)
      ch[r] = params["convs_0"]["conv"]["weight"].shape[3]
    params[f"convs_{n}"] = {"conv1": _conv(b.sub("conv0"), clamps),
                            "conv2": _conv(b.sub("conv1"), clamps),
                            "skip": _conv(b.sub("skip"), None, "linear", bias=False)}
    ch[r // 2] = params[f"convs_{n}"]["conv2"]["conv"]["weight"].shape[3]
  ep = D.sub("b4")
  ep.expect("architecture", lambda a: a == "resnet", "rosinality's D is the 'resnet' one")
  if ep.attr("cmap_dim", 0) or not ep.has("mbstd"):
    raise UserError(f"{ep.path}: conditional output or no minibatch stddev; {NOT_ROSINALITY}")
  mbstd = ep.sub("mbstd")
  group = mbstd.expect("group_size", lambda g: isinstance(g, int) and g >= 1,
                       "a fixed group size; None means the whole minibatch")
  feat = mbstd.expect("num_channels", lambda c: isinstance(c, int) and c >= 1, "stddev channels")
  params["final_conv"] = _conv(ep.sub("conv"), clamps)
  params["final_linear_0"] = _fc(ep.sub("fc"))
  params["final_linear_1"] = _fc(ep.sub("out"), activation="linear")
  fp16 = [r for r in sorted(ch) if r > 4 and D.sub(f"b{r}").attr("use_fp16")]
  fields = dict(d_conv_clamp=_one_clamp(clamps, D.path), d_stddev_group=int(group),
                d_stddev_feat=int(feat), d_fp16_resolutions=fp16)
  return fields, params, ch


def convert_snapshot(snap: dict) -> tuple[dict, dict, list[str], dict]:
  """A snapshot dict -> (config fields, trees, report lines, channel table).

  Reads 'G_ema' (else 'G'), and 'D' when present; 'G' (when 'G_ema' is there), 'augment_pipe'
  and 'training_set_kwargs' are reported and not converted."""
  gname = "G_ema" if "G_ema" in snap else "G" if "G" in snap else None
  if gname is None:
    raise UserError(f"holds NVIDIA modules {sorted(snap)} but no 'G_ema' or 'G'")
  report = [f"found {k}: {getattr(v, 'class_name', type(v).__name__)}"
            + ("" if k in (gname, "D") else " (not converted)") for k, v in snap.items()]
  fields, g, noises, w_avg, ch = convert_generator(_Mod(snap[gname], gname))
  trees = {"g_ema": g, "noises": noises}
  if w_avg is not None:
    trees["latent_avg"] = w_avg
    fields["truncation_center"] = "w_avg"
  if isinstance(snap.get("D"), PersistentObject):
    dfields, trees["d"], dch = convert_discriminator(_Mod(snap["D"], "D"), fields["size"])
    if dch != ch:
      raise UserError(f"D's channel table {dch} differs from {gname}'s {ch}; the weight format "
                      "holds one table for both")
    fields.update(dfields)
  report.append(f"{gname} -> g_ema: {fields['n_mlp']} mapping layers (lr {fields['lr_mlp']:g}), "
                f"conv_clamp {fields['conv_clamp']}, noise_const and w_avg kept"
                + (f"; fp16 at {fields['fp16_resolutions']} px computed in float32"
                   if fields["fp16_resolutions"] else ""))
  return fields, trees, report, ch
