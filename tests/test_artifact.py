"""The exported segmenter (`experiments.export_segmenter`, `l4f_jax.system.artifact`): it equals
the in-process student at several batch sizes, runs with jax alone as docs/segmentation.md shows,
records its provenance, and the loader refuses artifacts it must not run."""
import json
import os
import re

import jax
import numpy as np
import pytest

from l4f_jax import Segmenter
from l4f_jax.config import resolve
from l4f_jax.errors import UserError
from l4f_jax.method.student import predict_alpha
from l4f_jax.programs.export_segmenter import ExportConfig, export
from l4f_jax.system import artifact, weights
from tests.tiny_world import ROOT, make_segmenter_dir, run_snippet

PROVENANCE = {"generator_fingerprint": "00112233aabbccdd", "alpha_fingerprint": "feedfacecafe0001"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp("artifact")
  seg_dir = make_segmenter_dir(str(base / "seg"), size=16, **PROVENANCE)
  meta = export(resolve(ExportConfig, segmenter=seg_dir, out=str(base / "art")))
  return {"seg": seg_dir, "art": str(base / "art"), "meta": meta, "base": base}


def test_artifact_equals_the_in_process_student(exported):
  seg = weights.load_segmenter(exported["seg"])
  art = artifact.load_artifact(exported["art"])
  assert art.exported.platforms == ("cpu", "cuda", "tpu")
  call = jax.jit(art.exported.call)
  rng = np.random.default_rng(0)
  for batch in (1, 3, 8):
    x = rng.integers(0, 256, (batch, 16, 16, 3), dtype=np.uint8)
    want = np.asarray(predict_alpha(seg.params, x.astype(np.float32) / 127.5 - 1.0,
                                    model=seg.module))[..., 0]
    got = np.asarray(call(x))
    assert got.shape == (batch, 16, 16) and got.dtype == np.float32
    assert 0.0 <= got.min() and got.max() <= 1.0
    assert np.abs(got - want).max() <= 1e-5, (batch, np.abs(got - want).max())
  photo = rng.integers(0, 256, (23, 41, 3), dtype=np.uint8)
  np.testing.assert_allclose(Segmenter.load(exported["art"])(photo),
                             Segmenter.load(exported["seg"])(photo), atol=1e-5)
  np.testing.assert_allclose(Segmenter.load(os.path.join(exported["art"], "model.jax"))(photo),
                             Segmenter.load(exported["seg"])(photo), atol=1e-5)


def test_model_json_records_conventions_and_provenance(exported):
  meta = json.load(open(os.path.join(exported["art"], "model.json")))
  assert meta == exported["meta"]
  seg = weights.load_segmenter(exported["seg"])
  assert (meta["size"], meta["threshold"], meta["jax_version"]) == (16, 0.5, jax.__version__)
  assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["B", "S", "S", 3]
  assert meta["onnx"] is None and not os.path.exists(os.path.join(exported["art"], "model.onnx"))
  prov = meta["provenance"]
  assert {k: prov[k] for k in PROVENANCE} == PROVENANCE
  assert prov["segmenter_fingerprint"] == weights.fingerprint(seg.params)
  assert prov["arch"] == seg.config["arch"]
  blob = open(os.path.join(exported["art"], "model.jax"), "rb").read()
  assert meta["serialization_version"] == jax.export.deserialize(
      bytearray(blob)).calling_convention_version


def _doc_snippet() -> str:
  text = open(os.path.join(ROOT, "docs", "segmentation.md")).read()
  m = re.search(r"<!-- jax-only snippet -->\s*```python\n(.*?)```", text, re.S)
  assert m, "docs/segmentation.md lost its jax-only snippet"
  return m.group(1)


def test_the_documented_snippet_runs_with_jax_alone(exported, tmp_path):
  """docs/segmentation.md's snippet, run outside the checkout with l4f_jax unimportable."""
  alpha = run_snippet(_doc_snippet(), exported["art"], tmp_path, ("l4f_jax",), JAX_PLATFORMS="cpu")
  seg = weights.load_segmenter(exported["seg"])
  x = np.zeros((2, 16, 16, 3), np.uint8)   # the snippet's input: two black images
  want = np.asarray(predict_alpha(seg.params, x.astype(np.float32) / 127.5 - 1.0,
                                  model=seg.module))[..., 0]
  assert alpha.shape == (2, 16, 16) and np.abs(alpha - want).max() <= 1e-5


def _copy(exported, name, edit):
  import shutil
  dst = exported["base"] / name
  shutil.copytree(exported["art"], dst)
  edit(dst)
  return str(dst)


def _set_meta(**fields):
  def edit(d):
    meta = json.load(open(d / "model.json"))
    meta.update(fields)
    json.dump(meta, open(d / "model.json", "w"))
  return edit


def test_the_loader_refuses_what_it_must_not_run(exported):
  import hashlib
  other = _copy(exported, "old_jax", _set_meta(jax_version="0.4.1"))
  with pytest.raises(UserError, match=r"exported with jax 0\.4\.1, this is jax .*export it again"):
    artifact.load_artifact(other)
  flipped = _copy(exported, "flipped", lambda d: (d / "model.jax").write_bytes(
      (d / "model.jax").read_bytes()[:-10] + b"0123456789"))
  with pytest.raises(UserError, match="model.jax is missing or damaged"):
    artifact.load_artifact(flipped)
  garbage = b"not a flatbuffer at all" * 4
  bad = _copy(exported, "garbage", lambda d: ((d / "model.jax").write_bytes(garbage),
                                              _set_meta(model_sha256=hashlib.sha256(
                                                  garbage).hexdigest())(d)))
  with pytest.raises(UserError, match="cannot deserialize model.jax"):
    artifact.load_artifact(bad)
  with pytest.raises(UserError, match="not a version-1 segmenter artifact"):
    artifact.load_artifact(_copy(exported, "v2", _set_meta(version=2)))
  with pytest.raises(UserError, match="holds an earlier export_segmenter output; pass --overwrite"):
    export(resolve(ExportConfig, segmenter=exported["seg"], out=exported["art"]))
  # an earlier --onnx export (model.onnx is export_segmenter's) is replaced whole by --overwrite
  stale = _copy(exported, "with_onnx", lambda d: (d / "model.onnx").write_bytes(b"old"))
  export(resolve(ExportConfig, segmenter=exported["seg"], out=stale, overwrite=True))
  assert sorted(os.listdir(stale)) == ["model.jax", "model.json"]


def test_the_python_api_refuses_a_generator_and_an_unknown_fit(exported):
  with pytest.raises(UserError, match="Segmenter.load=.*not a segmenter export"):
    Segmenter.load(os.path.join(ROOT, "experiments", "assets", "shapes64"))
  with pytest.raises(UserError, match="fit='zoom' must be one of"):
    Segmenter.load(exported["art"], fit="zoom")
  with pytest.raises(ValueError, match="expected a PIL image or an array"):
    Segmenter.load(exported["art"])(np.zeros((4, 4, 2), np.uint8))
