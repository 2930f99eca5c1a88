"""NVIDIA network snapshots: conversion without NVIDIA's code or torch, and parity with NVIDIA's own
forward pass (golden outputs made by tests/data/nvidia/make_fixtures.py with their code on CPU).

Fixtures (tests/data/nvidia/*.json say how each was built): 8 mapping layers; conv_clamp 256 with
fp16 blocks and biases pushed past the clamp; config-f channels narrowed; 256 px; the stylegan3
repository's StyleGAN2 networks. Images at psi 1 and 0.7 around the stored w_avg with the stored
const noise, and D's logits, must match to 1e-4 (max abs, float32).
"""
import json
import os
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l4f_jax.errors import UserError
from l4f_jax.io import torch_pickle
from l4f_jax.ops.layers import ToRGB, Upsample
from l4f_jax.system import convert as conv
from l4f_jax.system import training, weights

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nvidia")
FIXTURES = ["ada_map8_32", "ada_clamp_fp16_64", "ada_cfgf_128", "ada_256", "sg3_stylegan2_32"]
TOL = 1e-4


def _fixture(name):
  snap = torch_pickle.read(os.path.join(HERE, f"{name}.pkl"))
  with open(os.path.join(HERE, f"{name}.json")) as f:
    meta = json.load(f)
  return snap, meta, dict(np.load(os.path.join(HERE, f"{name}.npz")))


def _d_input(meta):
  """make_fixtures.d_input: the images D's golden logits were computed on (NCHW)."""
  res = meta["resolution"]
  return np.random.RandomState(1).standard_normal((meta["batch"], 3, res, res)).astype(np.float32)


def _image_error(img_nchw, gold, key):
  if key in gold:
    return float(np.abs(img_nchw - gold[key]).max())
  n, c, h, w = img_nchw.shape
  px = img_nchw.reshape(n, c, h * w)[:, :, gold[key + "_idx"]]
  blocks = img_nchw.reshape(n, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
  return max(float(np.abs(px - gold[key + "_px"]).max()),
             float(np.abs(blocks - gold[key + "_blocks"]).max()))


def _errors(config, trees, meta, gold):
  G = weights.generator_from_config(config)
  out = {}
  for psi in meta["psis"]:
    run = jax.jit(lambda p, z, w, n, psi=psi: G.apply({"params": p}, z, truncation=psi,
                                                      truncation_latent=w, noise=n)[0])
    img = run(trees["g_ema"], jnp.asarray(gold["z"]), trees["latent_avg"], trees["noises"])
    out[f"img_psi{psi}"] = _image_error(np.asarray(img).transpose(0, 3, 1, 2), gold,
                                        f"img_psi{psi}")
  D = weights.discriminator_from_config(config)
  logits = jax.jit(D.apply)({"params": trees["d"]},
                            jnp.asarray(_d_input(meta).transpose(0, 2, 3, 1)))
  out["d_logits"] = float(np.abs(np.asarray(logits) - gold["d_logits"]).max())
  return out


@pytest.mark.parametrize("name", FIXTURES)
def test_parity_with_nvidia_forward(name):
  snap, meta, gold = _fixture(name)
  config, trees, _ = conv.convert_nvidia(snap)
  assert config["size"] == meta["resolution"] and config["n_mlp"] == meta["mapping_layers"]
  assert config["conv_clamp"] == meta["synthesis"].get("conv_clamp")
  assert config["d_stddev_group"] == meta["d"].get("epilogue_kwargs", {}).get(
      "mbstd_group_size", 4)
  assert np.abs(trees["latent_avg"]).max() > 0.1  # truncation really pulls towards w_avg
  errors = _errors(config, trees, meta, gold)
  assert max(errors.values()) <= TOL, errors


def test_clamp_and_stddev_channels_matter():
  """The clamp fixture fails without conv_clamp, and with rosinality's stddev defaults."""
  snap, meta, gold = _fixture("ada_clamp_fp16_64")
  config, trees, _ = conv.convert_nvidia(snap)
  assert config["d_stddev_feat"] == 2 and config["d_stddev_group"] == 2
  errors = _errors(dict(config, conv_clamp=None, d_conv_clamp=None), trees, meta, gold)
  assert min(errors.values()) > 1e-2, errors
  d_trees = dict(trees, d=dict(trees["d"]))
  with pytest.raises(Exception):  # one stddev channel: final_conv's input width differs
    _errors(dict(config, d_stddev_feat=None), d_trees, meta, gold)


def test_to_rgb_clamps_before_the_skip_sum():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)) * 50
  s = jax.random.normal(jax.random.key(1), (2, 8))
  skip = jax.random.normal(jax.random.key(2), (2, 4, 4, 3)) * 10
  params = ToRGB(conv_clamp=None).init(jax.random.key(3), x, s)
  free = ToRGB(conv_clamp=None).apply(params, x, s)
  clamped = ToRGB(conv_clamp=2.0).apply(params, x, s)
  with_skip = ToRGB(conv_clamp=2.0).apply(params, x, s, skip)
  assert float(jnp.abs(free).max()) > 4
  np.testing.assert_array_equal(np.asarray(clamped), np.clip(np.asarray(free), -2, 2))
  np.testing.assert_allclose(np.asarray(with_skip),
                             np.asarray(clamped + Upsample((1, 3, 3, 1))(skip)), atol=1e-5)


def test_convert_file_writes_a_weight_directory(tmp_path):
  dst = str(tmp_path / "w")
  lines = []
  config, _ = conv.convert_file(os.path.join(HERE, "ada_clamp_fp16_64.pkl"), dst,
                                log=lines.append)
  assert any("found G_ema: Generator" in s for s in lines)
  assert any("found augment_pipe: AugmentPipe (not converted)" in s for s in lines)
  assert any("fp16 at [8, 16, 32, 64] px computed in float32" in s for s in lines)
  gen = weights.load_generator(dst)
  assert sorted(gen.trees) == ["d", "g_ema", "latent_avg", "noises"]
  assert gen.config["truncation_center"] == "w_avg" and gen.module.conv_clamp == 256
  assert gen.discriminator().stddev_group == 2 and gen.discriminator().stddev_feat == 2
  assert gen.discriminator(stddev_group=1).stddev_group == 1  # a caller's choice wins
  snap = torch_pickle.read(os.path.join(HERE, "ada_clamp_fp16_64.pkl"))
  w_avg = snap["G_ema"].child("mapping").tensors("_buffers")["w_avg"]
  np.testing.assert_array_equal(np.asarray(training.generator_w_avg(gen, 0))[0], w_avg)
  # What the programs use (--noise_mode=const, the stored w_avg) is NVIDIA's noise_mode='const'.
  _, meta, gold = _fixture("ada_clamp_fp16_64")
  run = jax.jit(lambda p, z, w, n: gen.module.apply({"params": p}, z, truncation=0.7,
                                                    truncation_latent=w, noise=n)[0])
  img = run(gen.params, jnp.asarray(gold["z"]), training.generator_w_avg(gen, 0),
            training.generator_noise(gen, "const"))
  assert _image_error(np.asarray(img).transpose(0, 3, 1, 2), gold, "img_psi0.7") <= TOL
  assert training.generator_noise(gen, "random") is None


def test_rosinality_defaults_reproduce_todays_models():
  """A rosinality conversion carries the new fields at values that build today's models."""
  config = dict(size=32, style_dim=16, n_mlp=2, channel_multiplier=None, channel_base=512,
                channel_max=16, lr_mlp=0.01, **conv.ROSINALITY_G, **conv.ROSINALITY_D)
  assert weights.generator_from_config(config) == weights.generator_from_config(
      {k: config[k] for k in weights.MODEL_KEYS})
  assert weights.discriminator_from_config(config) == weights.discriminator_from_config(
      {k: config[k] for k in weights.MODEL_KEYS})
  assert not weights.truncation_center_is_stored(config)


@pytest.mark.parametrize("fixture, says", [
    ("cond_g", "conditional generator (c_dim=2)"),
    ("sg3_t", "StyleGAN3 (-t / -r) generator"),
])
def test_refused_networks(tmp_path, fixture, says):
  dst = str(tmp_path / "w")
  with pytest.raises(UserError) as e:
    conv.convert_file(os.path.join(HERE, f"{fixture}.pkl"), dst, log=lambda s: None)
  assert says in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(dst)


def test_truncated_snapshot_is_refused(tmp_path):
  data = open(os.path.join(HERE, "ada_map8_32.pkl"), "rb").read()
  src = tmp_path / "cut.pkl"
  src.write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError) as e:
    conv.convert_file(str(src), str(tmp_path / "w"), log=lambda s: None)
  assert "is truncated" in str(e.value) and "\n" not in str(e.value)


def test_module_source_is_never_executed(tmp_path, monkeypatch):
  """A snapshot whose module_src would create a file converts as far as its state allows, and
  the file is never created (the reader drops the source unread)."""
  marker = tmp_path / "ran"
  fake = types.ModuleType("torch_utils.persistence")

  def _reconstruct_persistent_obj(meta):  # stand-in name for pickling only
    return meta
  fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

  class Evil:
    def __reduce__(self):
      meta = dict(type="class", version=6, class_name="Generator", state={"_modules": {}},
                  module_src=f"open({str(marker)!r}, 'w').write('x')\n")
      return (_reconstruct_persistent_obj, (meta,))
  src = tmp_path / "evil.pkl"
  for obj in ({"G_ema": Evil()}, Evil()):  # a snapshot, or a Generator pickled on its own
    src.write_bytes(pickle.dumps(obj))
    with pytest.raises(UserError) as e:
      conv.convert_file(str(src), str(tmp_path / "w"), log=lambda s: None)
    assert "G_ema has no submodule 'synthesis'" in str(e.value)
    assert not marker.exists()
