"""The restricted checkpoint reader (l4f_jax/io/torch_pickle.py) against torch.load itself.

Every checkpoint kind the converter reads is converted twice: from torch.load's tensors (the
converter's path before this reader) and from the reader's arrays; the weight trees and configs
must be bit-identical. torch is needed by these tests only, not by the reader.
"""
import argparse
import io
import os
import pickle

import jax
import numpy as np
import pytest
import torch

from l4f_jax.errors import UserError
from l4f_jax.io import torch_pickle
from l4f_jax.reference import torch_labels4free as ref_l4f
from l4f_jax.reference import torch_stylegan2 as ref
from l4f_jax.system import convert as conv
from l4f_jax.system.weights import fingerprint, load_weights

TINY = dict(channel_base=512, channel_max=16, style_dim=16, n_mlp=2)


def _leaves(tree):
  return [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]]


def _assert_bit_identical(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert [k for k, _ in la] == [k for k, _ in lb]
  for (k, x), (_, y) in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape, k
    assert x.tobytes() == y.tobytes(), k


def _torch_path(path):
  """The converter before the reader: torch.load (trusted test files) -> convert_checkpoint."""
  return conv.convert_checkpoint(torch.load(path, map_location="cpu", weights_only=False))


def _checkpoints(tmp):
  """{kind: path} of every checkpoint kind the converter reads."""
  torch.manual_seed(0)
  g = ref.Generator(32, **TINY)
  d = ref.Discriminator(32, channel_base=512, channel_max=16)
  repro = ref_l4f.BgExtractorRepro(32, g.channels)
  nonrepro = ref_l4f.BgExtractor(32, g.channels)
  opt = torch.optim.Adam(d.parameters())
  d(torch.randn(4, 3, 32, 32)).sum().backward()
  opt.step()
  out = {}

  def save(kind, obj, **kw):
    out[kind] = os.path.join(tmp, f"{kind}.pt")
    torch.save(obj, out[kind], **kw)

  ros = {"g_ema": g.state_dict(), "g": g.state_dict(), "d": d.state_dict(),
         "latent_avg": torch.randn(16), "g_optim": opt.state_dict(), "d_optim": opt.state_dict(),
         "args": argparse.Namespace(size=32, lr=0.002, name="x"), "ada_aug_p": np.float64(0.25)}
  save("rosinality", ros)
  save("rosinality_legacy_format", ros, _use_new_zipfile_serialization=False)
  save("g_ema_only", {"g_ema": g.state_dict()})
  save("labels4free_repro", {"g": g.state_dict(), "d": d.state_dict(),
                             "bg_extractor_ema": repro.state_dict(), "args": ros["args"]})
  save("labels4free_ddp_nonrepro", {"g": g.state_dict(), "bg_extractor": {
      f"module.{k}": v for k, v in nonrepro.state_dict().items()}})
  save("alpha_only", {"bg_extractor_ema": ref_l4f.BgExtractorRepro(
      256, ref.stylegan2_channels(256, 2)).state_dict()})
  # Views and other layouts: a transposed (non-contiguous) weight sharing storage, fp16.
  sd = dict(g.state_dict())
  sd["style.1.weight"] = sd["style.1.weight"].t().contiguous().t()
  save("non_contiguous", {"g_ema": sd})
  return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  return _checkpoints(str(tmp_path_factory.mktemp("ckpts")))


@pytest.mark.parametrize("kind", ["rosinality", "rosinality_legacy_format", "g_ema_only",
                                  "labels4free_repro", "labels4free_ddp_nonrepro", "alpha_only",
                                  "non_contiguous"])
def test_reader_converts_bit_identically_to_torch_load(checkpoints, kind, tmp_path):
  path = checkpoints[kind]
  want_cfg, want, _ = _torch_path(path)
  got_cfg, got, _ = conv.convert_checkpoint(torch_pickle.read(path))
  assert got_cfg == want_cfg
  _assert_bit_identical(got, want)
  dst = str(tmp_path / "w")  # and the weight directory written by the CLI's path
  conv.convert_file(path, dst, log=lambda s: None)
  cfg, trees = load_weights(dst)
  _assert_bit_identical(trees, want)
  for name in ("g_ema", "g", "alpha"):
    if name in want:
      assert fingerprint(trees[name]) == fingerprint(want[name])


def test_reader_tensors_match_torch():
  t = torch.randn(3, 4)
  obj = {"a": t, "t": t.t(), "view": torch.arange(10)[2:7:2], "half": t.half(),
         "bf16": t.bfloat16(), "bool": t > 0, "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.),
         "p": torch.nn.Parameter(t.clone())}
  for legacy in (False, True):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    path = f"/tmp/_tp_{os.getpid()}_{legacy}.pt"
    with open(path, "wb") as f:
      f.write(buf.getvalue())
    got = torch_pickle.read(path)
    os.remove(path)
    for k, v in obj.items():
      want = v.detach().float().numpy() if k == "bf16" else v.detach().numpy()
      g = got[k].astype(np.float32) if k == "bf16" else got[k]
      assert g.dtype == want.dtype and g.shape == want.shape and np.array_equal(g, want), k
  # A plain pickle (NVIDIA's snapshots): storages as torch.storage._load_from_bytes streams.
  path = f"/tmp/_tp_{os.getpid()}.pkl"
  with open(path, "wb") as f:
    pickle.dump({"t": t, "p": torch.nn.Parameter(t.t())}, f)
  got = torch_pickle.read(path)
  os.remove(path)
  assert np.array_equal(got["t"], t.numpy()) and np.array_equal(got["p"], t.t().numpy())


@pytest.mark.parametrize("payload, says", [
    (b"cos\nsystem\n(S'echo pwned > /tmp/l4f_pwned'\ntR.", "asks for os.system"),
    (b"cbuiltins\neval\n(S'1'\ntR.", "asks for builtins.eval"),
    (pickle.dumps(__import__("collections").Counter("ab")), "asks for collections.Counter"),
    (b"cdnnlib.tflib.network\nNetwork\n)\x81}b.", "TensorFlow-era"),
])
def test_reader_refuses_other_globals_without_calling_them(tmp_path, payload, says):
  path = tmp_path / "evil.pkl"
  path.write_bytes(payload)
  with pytest.raises(torch_pickle.Refused) as e:
    torch_pickle.read(str(path))
  assert says in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists("/tmp/l4f_pwned")
  with pytest.raises(UserError) as e:  # through the converter: one line naming the file
    conv.convert_file(str(path), str(tmp_path / "w"), log=lambda s: None)
  assert str(e.value).startswith(str(path)) and says in str(e.value)
  assert not os.path.exists(tmp_path / "w")
