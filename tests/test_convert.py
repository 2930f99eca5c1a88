"""Converter and weight-directory behaviour: clear one-line failures, atomic output, round trips."""
import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l4f_jax.system.convert import convert_file
from l4f_jax.models.alpha import AlphaNetwork, alpha_levels
from l4f_jax.system import convert as conv
from l4f_jax.errors import UserError
from l4f_jax.system.weights import (WeightsError, generator_from_config, load_weights,
                                    save_weights)
from l4f_jax.reference import torch_labels4free as ref_l4f
from l4f_jax.reference import torch_stylegan2 as ref
from tests import cli_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(channel_base=512, channel_max=16, style_dim=16, n_mlp=2)  # 32 px, 16 -> 16 channels


@pytest.fixture(scope="module")
def tiny_g():
  torch.manual_seed(0)
  return ref.Generator(32, **TINY)


@pytest.fixture(scope="module")
def rosinality_pt(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
  ref.make_rosinality_checkpoint(path, 32, **TINY)
  return path


def _assert_clean(dst):
  """Nothing at dst and no temporary folders next to it."""
  assert not os.path.lexists(dst)
  parent = os.path.dirname(dst)
  if os.path.isdir(parent):
    left = [f for f in os.listdir(parent) if f.startswith(f".{os.path.basename(dst)}.")]
    assert not left, left


def _one_line(e):
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


# ------------------------------------------------------------------------------------------------
# Key and shape checks


def test_missing_key_is_named(tiny_g):
  sd = dict(tiny_g.state_dict())
  del sd["convs.1.conv.modulation.bias"]
  with pytest.raises(UserError) as e:
    conv.convert_generator(sd)
  msg = _one_line(e)
  assert "missing key 'convs.1.conv.modulation.bias'" in msg and "[16]" in msg


def test_renamed_key_is_named(tiny_g):
  sd = dict(tiny_g.state_dict())
  sd["to_rgb1.biass"] = sd.pop("to_rgb1.bias")
  with pytest.raises(UserError) as e:
    conv.convert_generator(sd)
  assert "missing key 'to_rgb1.bias'" in _one_line(e)


def test_unexpected_key_is_named(tiny_g):
  sd = dict(tiny_g.state_dict())
  sd["convs.1.extra.weight"] = torch.zeros(3)
  with pytest.raises(UserError) as e:
    conv.convert_generator(sd)
  msg = _one_line(e)
  assert "unexpected key 'convs.1.extra.weight'" in msg and "[3]" in msg


def test_wrong_shape_names_key_and_both_shapes(tiny_g):
  sd = dict(tiny_g.state_dict())
  sd["convs.2.activate.bias"] = torch.zeros(5)
  with pytest.raises(UserError) as e:
    conv.convert_generator(sd)
  msg = _one_line(e)
  assert "'convs.2.activate.bias'" in msg and "[5]" in msg and "[16]" in msg


def test_discriminator_wrong_shape(tmp_path):
  torch.manual_seed(0)
  sd = dict(ref.Discriminator(32, channel_base=512, channel_max=16).state_dict())
  sd["final_linear.0.weight"] = torch.zeros(16, 100)
  with pytest.raises(UserError) as e:
    conv.convert_discriminator(sd, 32)
  msg = _one_line(e)
  assert "'final_linear.0.weight'" in msg and "[16, 100]" in msg and "[16, 256]" in msg
  with pytest.raises(UserError) as e:
    conv.convert_discriminator(sd, 64)
  assert "64 px" in _one_line(e)


def test_channel_tables():
  assert conv.channel_fields({4: 512, 8: 512, 16: 512, 32: 512, 64: 256}, 64) == dict(
      channel_multiplier=1, channel_base=None, channel_max=512)
  assert conv.channel_fields({4: 64, 8: 64, 16: 32, 32: 16}, 32) == dict(
      channel_multiplier=None, channel_base=512, channel_max=64)
  with pytest.raises(UserError) as e:
    conv.channel_fields({4: 64, 8: 100, 16: 32}, 16)
  assert "cannot be represented" in _one_line(e)


def test_converted_tree_matches_flax_init(tiny_g):
  fields, params, noises = conv.convert_generator(tiny_g.state_dict())
  assert fields == dict(size=32, style_dim=16, n_mlp=2, channel_multiplier=None,
                        channel_base=512, channel_max=16)
  gen = generator_from_config(dict(fields, lr_mlp=0.01))
  init = jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), jnp.zeros((1, 16)),
                                         noise_key=jax.random.PRNGKey(1)))["params"]
  assert jax.tree.structure(init) == jax.tree.structure(params)
  assert [x.shape for x in jax.tree.leaves(init)] == [x.shape for x in jax.tree.leaves(params)]
  assert len(noises) == 7


# ------------------------------------------------------------------------------------------------
# Files and destinations


def test_not_a_checkpoint(tmp_path):
  bad = tmp_path / "notes.pt"
  bad.write_text("hello, not a checkpoint\n")
  dst = str(tmp_path / "out")
  with pytest.raises(UserError) as e:
    convert_file(str(bad), dst, log=lambda s: None)
  assert "is not a PyTorch checkpoint" in _one_line(e)
  _assert_clean(dst)
  tensor = tmp_path / "tensor.pt"
  torch.save(torch.ones(3), tensor)
  with pytest.raises(UserError) as e:
    convert_file(str(tensor), dst, log=lambda s: None)
  assert "not a checkpoint dict" in _one_line(e)
  with pytest.raises(UserError) as e:
    convert_file(str(tmp_path / "missing.pt"), dst, log=lambda s: None)
  assert "does not exist" in _one_line(e)
  _assert_clean(dst)


def test_bad_state_dict_leaves_nothing(tmp_path, tiny_g):
  sd = dict(tiny_g.state_dict())
  sd["conv1.conv.weight"] = torch.zeros(1, 16, 16, 3, 2)
  src = tmp_path / "bad.pt"
  torch.save({"g_ema": sd}, src)
  dst = str(tmp_path / "out")
  with pytest.raises(UserError) as e:
    convert_file(str(src), dst, log=lambda s: None)
  assert "'conv1.conv.weight'" in _one_line(e) and "[1, 16, 16, 3, 2]" in str(e.value)
  _assert_clean(dst)


def test_existing_dst_is_refused_and_untouched(tmp_path, rosinality_pt):
  dst = tmp_path / "taken"
  dst.mkdir()
  (dst / "keep.txt").write_text("precious")
  with pytest.raises(WeightsError) as e:
    convert_file(rosinality_pt, str(dst), log=lambda s: None)
  assert "already exists" in _one_line(e) and "--overwrite" in str(e.value)
  with pytest.raises(WeightsError) as e:  # --overwrite never replaces a non-weight directory
    convert_file(rosinality_pt, str(dst), overwrite=True, log=lambda s: None)
  assert "not a weight directory" in _one_line(e)
  assert os.listdir(dst) == ["keep.txt"] and (dst / "keep.txt").read_text() == "precious"
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".taken.")]


def test_overwrite_replaces_a_weight_directory(tmp_path, rosinality_pt):
  dst = str(tmp_path / "w")
  save_weights(dst, {"size": 32}, {"latent_avg": np.zeros((1, 16), np.float32)})
  convert_file(rosinality_pt, dst, overwrite=True, log=lambda s: None)
  config, trees = load_weights(dst)
  assert sorted(trees) == ["d", "g", "g_ema", "latent_avg", "noises"]
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".w.")]


def test_pickled_args_are_read_without_running_code(tmp_path, tiny_g):
  """The restricted reader reads rosinality's argparse 'args' as plain attributes: no
  --allow_pickle needed (the flag is still accepted), and nothing from the file is executed."""
  src = tmp_path / "train.pt"
  torch.save({"g_ema": tiny_g.state_dict(), "args": argparse.Namespace(size=32)}, src)
  dst = str(tmp_path / "out")
  lines = []
  convert_file(str(src), dst, log=lines.append)
  assert any("found args: Namespace" in s for s in lines)
  assert sorted(load_weights(dst)[1]) == ["g_ema", "noises"]
  convert_file(str(src), dst, allow_pickle=True, overwrite=True, log=lambda s: None)


def test_load_weights_errors(tmp_path):
  with pytest.raises(WeightsError) as e:
    load_weights(str(tmp_path / "nowhere"))
  assert "does not exist" in _one_line(e) and "experiments.convert" in str(e.value)
  (tmp_path / "plain").mkdir()
  with pytest.raises(WeightsError) as e:
    load_weights(str(tmp_path / "plain"))
  msg = _one_line(e)
  assert "not a converted-weight directory" in msg and "experiments.convert" in msg
  with pytest.raises(WeightsError) as e:
    generator_from_config({"size": 32})
  assert "lacks" in _one_line(e)


def test_weights_saved_on_4_devices_restore_on_1(tmp_path):
  """Arrays replicated over the 4 test devices restore in a fresh 1-device process."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  trees = {"alpha": {"conv_n": {"weight": jax.device_put(jnp.ones((1, 1, 6, 1)), rep),
                                "bias": jax.device_put(jnp.zeros((1,)), rep)}},
           "noises": [np.ones((1, 4, 4, 1), np.float32), np.ones((1, 8, 8, 1), np.float32)]}
  assert len(jax.devices()) == 4
  dst = str(tmp_path / "multi")
  save_weights(dst, {"size": 16}, trees)
  config, back = load_weights(dst)
  assert isinstance(back["noises"], list) and back["noises"][1].shape == (1, 8, 8, 1)
  script = ("from l4f_jax.system.weights import load_weights; import jax; "
            f"c, t = load_weights({dst!r}); assert len(jax.devices()) == 1; "
            "print(float(t['alpha']['conv_n']['weight'].sum()), len(t['noises']))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["6.0", "2"]


# ------------------------------------------------------------------------------------------------
# Official Labels4Free checkpoints


def _alpha_nets(size, channels, seed):
  torch.manual_seed(seed)
  repro = ref_l4f.BgExtractorRepro(size, channels)
  nonrepro = ref_l4f.BgExtractor(size, channels)
  nonrepro.load_state_dict({ref_l4f.repro_to_nonrepro_key(k): v
                            for k, v in repro.state_dict().items()})
  return repro, nonrepro


def _l4f_checkpoint(path, tiny_g, alpha_entries):
  """Official train.py layout: g (no g_ema), d, alpha entries, optimiser states, args."""
  torch.manual_seed(1)
  d = ref.Discriminator(32, channel_base=512, channel_max=16)
  opt = torch.optim.Adam(d.parameters())
  ckpt = {"g": tiny_g.state_dict(), "d": d.state_dict(), "g_optim": opt.state_dict(),
          "d_optim": opt.state_dict(), "args": argparse.Namespace(size=32), "ada_aug_p": 0.0}
  ckpt.update(alpha_entries)
  torch.save(ckpt, path)


def _check_alpha(params, torch_alpha, size, channels):
  """Converted params give the torch network's alpha on the same random features."""
  n, min_res = alpha_levels(size)
  rs = np.random.RandomState(0)
  feats = [rs.randn(2, channels[min_res * 2 ** (j // 2)], min_res * 2 ** (j // 2),
                    min_res * 2 ** (j // 2)).astype(np.float32) for j in range(2 * n)]
  with torch.no_grad():
    want = torch_alpha([torch.from_numpy(f) for f in feats]).numpy().transpose(0, 2, 3, 1)
  got = AlphaNetwork(size).apply({"params": params}, [f.transpose(0, 2, 3, 1) for f in feats])
  err = float(np.max(np.abs(np.asarray(got) - want)))
  assert got.shape == (2, size, size, 1) and err < 1e-5, err
  return err


@pytest.mark.parametrize("variant", ["ema_repro", "ddp_nonrepro", "both_prefers_ema"])
def test_labels4free_checkpoint_round_trip(tmp_path, tiny_g, variant):
  repro, nonrepro = _alpha_nets(32, tiny_g.channels, seed=3)
  ddp = {f"module.{k}": v for k, v in nonrepro.state_dict().items()}
  entries, want = {
      "ema_repro": ({"bg_extractor_ema": repro.state_dict()}, repro),
      "ddp_nonrepro": ({"bg_extractor": ddp}, nonrepro),
      "both_prefers_ema": ({"bg_extractor_ema": repro.state_dict(),
                            "bg_extractor": {f"module.{k}": v for k, v in
                                             ref_l4f.BgExtractor(32, tiny_g.channels)
                                             .state_dict().items()}}, repro),
  }[variant]
  src = tmp_path / "l4f.pt"
  _l4f_checkpoint(src, tiny_g, entries)
  dst = str(tmp_path / "out")
  lines = []
  convert_file(str(src), dst, allow_pickle=True, log=lines.append)
  config, trees = load_weights(dst)
  assert sorted(trees) == ["alpha", "d", "g", "noises"]
  assert config["alpha_source"] == ("bg_extractor" if variant == "ddp_nonrepro"
                                    else "bg_extractor_ema")
  assert config["alpha_names"] == ("bg_extractor" if variant == "ddp_nonrepro" else "repro")
  np.testing.assert_array_equal(np.asarray(trees["alpha"]["conv1"]["weight"][0, 0]),
                                repro.conv1.weight.detach().numpy()[:, :, 0, 0].T)
  _check_alpha(trees["alpha"], want, 32, tiny_g.channels)
  if variant == "ddp_nonrepro":
    assert any("module. prefix stripped" in s for s in lines)


def test_alpha_errors_use_the_files_names(tiny_g):
  _, nonrepro = _alpha_nets(32, tiny_g.channels, seed=3)
  sd = {f"module.{k}": v for k, v in nonrepro.state_dict().items()}
  sd["module.conv_merge_fns.0.weight"] = torch.zeros(6, 11, 1, 1)
  with pytest.raises(UserError) as e:
    conv.convert_alpha(sd, {"size": 32, "channel_base": 512, "channel_max": 16})
  msg = _one_line(e)
  assert "'conv_merge_fns.0.weight'" in msg and "[6, 11, 1, 1]" in msg and "[6, 12, 1, 1]" in msg
  del sd["module.conv_fns1.2.bias"]
  with pytest.raises(UserError) as e:
    conv.convert_alpha(sd, {"size": 32, "channel_base": 512, "channel_max": 16})
  assert "missing key 'conv_fns1.2.bias'" in _one_line(e)


def test_alpha_only_size_inference():
  ch = ref.stylegan2_channels(256, 2)
  repro, _ = _alpha_nets(256, ch, seed=0)
  info, params = conv.convert_alpha(repro.state_dict())
  assert info["size"] == 256 and info["channel_multiplier"] == 2
  _check_alpha(params, repro, 256, ch)
  big, _ = _alpha_nets(1024, ref.stylegan2_channels(1024, 2), seed=0)
  with pytest.raises(UserError) as e:  # same widths as 512 px with channel_multiplier 1
    conv.convert_alpha(big.state_dict())
  assert "--size" in _one_line(e) and "[512, 1024]" in str(e.value)
  assert conv.convert_alpha(big.state_dict(), size=1024)[0]["size"] == 1024


# ------------------------------------------------------------------------------------------------
# Command line


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return cli_runner.run([sys.executable, "-m", "experiments.convert", *args], cwd=ROOT, env=env,
                        timeout=300)


def test_cli_reports_what_it_found_and_fails_in_one_line(tmp_path, tiny_g):
  repro, _ = _alpha_nets(32, tiny_g.channels, seed=3)
  src = str(tmp_path / "l4f.pt")
  _l4f_checkpoint(src, tiny_g, {"bg_extractor_ema": repro.state_dict()})
  dst = str(tmp_path / "out")
  out = _cli(f"--src={src}", f"--dst={dst}", "--overwrite", "--lr_mlp=0")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  err_lines = [s for s in out.stderr.splitlines() if s.strip()]
  assert len(err_lines) == 1 and "--lr_mlp" in err_lines[0], out.stderr
  _assert_clean(dst)
  out = _cli(f"--src={src}", f"--dst={dst}")
  assert out.returncode == 0, out.stderr[-2000:]
  for expected in ("found g: state_dict", "found d: state_dict", "found args: Namespace",
                   "found bg_extractor_ema: state_dict",
                   "alpha <- 'bg_extractor_ema' (repro names)",
                   f"wrote {dst} (size=32", "  g: ", "  alpha: ", "  noises: 7 arrays"):
    assert expected in out.stdout, (expected, out.stdout)


# ------------------------------------------------------------------------------------------------
# Converted weights drive the sampler


def test_sample_writes_official_outputs(tmp_path, tiny_g):
  from PIL import Image

  from l4f_jax.config import resolve
  from l4f_jax.programs.sampling import SampleConfig, sample

  repro, _ = _alpha_nets(32, tiny_g.channels, seed=3)
  src = str(tmp_path / "l4f.pt")
  _l4f_checkpoint(src, tiny_g, {"bg_extractor_ema": repro.state_dict()})
  wdir = str(tmp_path / "w")
  convert_file(src, wdir, allow_pickle=True, log=lambda s: None)
  out = str(tmp_path / "samples")
  paths = sample(resolve(SampleConfig, generator=wdir, out=out, n=3, truncation=0.5, batch=2,
                         background=True, alpha=wdir, grid_cols=2))
  names = sorted(os.path.basename(p) for p in paths)
  assert names[:3] == ["000000_alpha_mask.png", "000000_background.png", "000000_composite.png"]
  assert {"images.png", "backgrounds.png", "alpha_grid.png", "000002_hard_mask.png"} <= set(names)
  hard = np.asarray(Image.open(os.path.join(out, "000001_hard_mask.png")))
  assert hard.shape == (32, 32) and set(np.unique(hard)) <= {0, 255}
  with pytest.raises(UserError) as e:  # official Labels4Free files carry no latent_avg
    sample(resolve(SampleConfig, generator=wdir, out=str(tmp_path / "again"),
                   use_latent_avg=True))
  assert "latent_avg" in _one_line(e)
  _assert_clean(str(tmp_path / "again"))
