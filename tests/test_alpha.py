"""The alpha network A: official sizes, feature selection and float32 forward parity with the torch
reference (`bg_extractor_repro` and `bg_extractor` names), including an official-format checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l4f_jax.models.alpha import AlphaNetwork, alpha_levels, feature_indices, select_features
from l4f_jax.models.stylegan2 import Generator, channel_table
from l4f_jax.system import convert
from l4f_jax.reference import torch_labels4free as tl
from l4f_jax.reference import torch_stylegan2 as ts

ATOL = 1e-5


def _feature_shapes(size, ch, batch=1):
  n, min_res = alpha_levels(size)
  return [(batch, min_res * 2 ** (j // 2), min_res * 2 ** (j // 2), ch[min_res * 2 ** (j // 2)])
          for j in range(2 * n)]


def _n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size,count", [(256, 14947), (512, 12259), (1024, 9379)])
def test_official_parameter_counts(size, count):
  ch = channel_table(size, 2)
  feats = [jax.ShapeDtypeStruct(s, jnp.float32) for s in _feature_shapes(size, ch)]
  shapes = jax.eval_shape(lambda f: AlphaNetwork(size).init(jax.random.PRNGKey(0), f), feats)
  assert _n_params(shapes["params"]) == count
  assert sum(p.numel() for p in tl.BgExtractorRepro(size, ch).parameters()) == count
  assert sum(p.numel() for p in tl.BgExtractor(size, ch).parameters()) == count


@pytest.mark.parametrize("size,first_conv,min_res", [(256, 0, 8), (512, 2, 16), (1024, 4, 32)])
def test_feature_selection(size, first_conv, min_res):
  """Features are convs.{first_conv} .. convs.{first_conv + 11} ([conv1, convs.0, ...] indexing)."""
  n_layers = 2 * int(np.log2(size)) - 3
  names = ["conv1"] + [f"convs.{i}" for i in range(n_layers - 1)]
  assert alpha_levels(size) == (6, min_res)
  assert [names[i] for i in feature_indices(size)] == [f"convs.{first_conv + j}" for j in range(12)]
  assert select_features(names, size) == tl.select_features(names, size)
  # widths follow the generator's channel table, e.g. config-f 256: 512 x 8, 256 x 2, 128 x 2
  ch = channel_table(size, 2)
  widths = [s[-1] for s in _feature_shapes(size, ch)]
  assert widths == [ch[min_res * 2 ** (j // 2)] for j in range(12)]
  if size == 256:
    assert widths == [512] * 8 + [256] * 2 + [128] * 2


def test_small_sizes_use_every_block():
  assert alpha_levels(16) == (2, 8) and alpha_levels(32) == (3, 8) and alpha_levels(128) == (5, 8)
  assert feature_indices(32) == [1, 2, 3, 4, 5, 6]
  with pytest.raises(ValueError):
    alpha_levels(8)


def _torch_alpha(cls, size, ch, seed):
  torch.manual_seed(seed)
  a = cls(size, ch)
  with torch.no_grad():  # torch's default init draws biases U(+-1/sqrt(fan_in)); widen them a bit
    for p in a.parameters():
      p.mul_(1.5)
  return a.eval()


def _sd(module, prefix=""):
  return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("size,cm,base,cmax,batch", [(64, 2, 1024, 24, 2), (256, 2, None, 512, 1)])
@pytest.mark.parametrize("variant", ["repro", "bg_extractor"])
def test_forward_matches_reference(size, cm, base, cmax, batch, variant):
  ch = channel_table(size, cm, base, cmax)
  cls = tl.BgExtractorRepro if variant == "repro" else tl.BgExtractor
  ref = _torch_alpha(cls, size, ch, seed=size)
  rng = np.random.default_rng(size)
  feats = [rng.standard_normal(s).astype(np.float32) for s in _feature_shapes(size, ch, batch)]
  with torch.no_grad():
    want = ref([torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for f in feats]).numpy()
  info, params = convert.convert_alpha(_sd(ref), dict(size=size, channel_multiplier=cm,
                                                       channel_base=base, channel_max=cmax))
  assert info["names"] == variant
  got = jax.jit(lambda p, f: AlphaNetwork(size).apply({"params": p}, f))(params, feats)
  assert got.shape == (batch, size, size, 1)
  # the masks must not be trivially saturated for the comparison to mean anything
  assert 0.02 < float(np.std(want)) and 0.05 < float(np.mean(want)) < 0.95
  np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), rtol=0, atol=ATOL)


def test_official_checkpoint_gives_reference_masks():
  """{'g', 'd', 'bg_extractor' (module.-prefixed, bg_extractor names), 'bg_extractor_ema' (repro
  names), ...} -> converted trees; G features -> A equals the torch reference end to end."""
  size, arch = 32, dict(channel_multiplier=2, channel_base=512, channel_max=32)
  torch.manual_seed(0)
  tg = ts.perturb_(ts.Generator(size, 32, 2, **arch), 0).eval()
  td = ts.Discriminator(size, **arch)
  ta = _torch_alpha(tl.BgExtractorRepro, size, tg.channels, seed=1)
  ta_nonrepro = tl.BgExtractor(size, tg.channels)
  ta_nonrepro.load_state_dict({tl.repro_to_nonrepro_key(k): v for k, v in ta.state_dict().items()})
  ckpt = {"g": tg.state_dict(), "d": td.state_dict(),
          "bg_extractor": {"module." + k: v for k, v in ta_nonrepro.state_dict().items()},
          "bg_extractor_ema": ta.state_dict(), "g_optim": {}, "d_optim": {}, "args": None,
          "ada_aug_p": 0.0}
  config, trees, _ = convert.convert_checkpoint(ckpt)
  assert config["size"] == size and config["alpha_source"] == "bg_extractor_ema"
  # the DDP-prefixed non-repro copy converts to the same tree
  _, from_ddp = convert.convert_alpha(ckpt["bg_extractor"], config)
  jax.tree.map(np.testing.assert_array_equal, from_ddp, trees["alpha"])

  rng = np.random.default_rng(0)
  z = rng.standard_normal((2, 32)).astype(np.float32)
  noise = [rng.standard_normal((2, r, r, 1)).astype(np.float32)
           for r in (2 ** ((j + 5) // 2) for j in range(tg.num_layers))]
  with torch.no_grad():
    _, tfeats = tg([torch.from_numpy(z)],
                   noise=[torch.from_numpy(n.transpose(0, 3, 1, 2).copy()) for n in noise])
    want = ta(tl.select_features(tfeats, size)).numpy().transpose(0, 2, 3, 1)
  g = Generator(size, 32, 2, **arch)

  @jax.jit
  def masks(g_params, a_params, z, noise):
    _, feats = g.apply({"params": g_params}, z, noise=noise)
    return AlphaNetwork(size).apply({"params": a_params}, select_features(feats, size))

  got = masks(trees["g"], trees["alpha"], jnp.asarray(z), [jnp.asarray(n) for n in noise])
  assert 0.01 < float(np.std(want))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=ATOL)
