"""The student as a portable file: a `jax.export` artifact and its description.

  <out>/model.jax    `jax.export.Exported.serialize()` of alpha = f(images): uint8 RGB
                     [B, S, S, 3] -> float32 alpha [B, S, S] in [0, 1], B symbolic, lowered for
                     cpu, cuda and tpu in one file; the weights are constants inside it
  <out>/model.json   format, size S, threshold (hard mask = alpha > threshold), the input and
                     output conventions, the fit the segment program uses by default, the jax
                     version and serialization version, the sha256 of model.jax, and provenance:
                     the generator's and A's fingerprints, the student's fingerprint, architecture
                     and training config, the segmenter directory it came from
  <out>/model.onnx   only with --onnx (optional: pip install -r requirements-onnx.txt): the same
                     function converted by jax2onnx, input "images" uint8 [B, S, S, 3], output
                     "alpha" float32 [B, S, S], B dynamic, opset ONNX_OPSET; model.json's "onnx"
                     records its opset, sha256, the jax2onnx and onnxruntime versions and the
                     largest difference to the student that onnxruntime gave on a check batch
                     (the export is refused above ONNX_CHECK_ATOL); "onnx" is null without --onnx

It runs with `jax.export.deserialize` and nothing from this package (docs/segmentation.md shows
how). `f` is `method.student.alpha_from_uint8`, the function every in-process caller runs, so the
artifact equals the in-process student up to the rounding of a separate compilation.

`load_artifact` reads it back for `Segmenter.load` and `experiments.segment`; it refuses, with one
line, an artifact written by another jax version (jax.export only promises that a newer jax reads
an older artifact for a limited time; exporting again from the segmenter directory is cheap), a
model.jax that does not match its recorded digest, and one that jax cannot deserialize.
"""
from __future__ import annotations

import dataclasses
import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from l4f_jax.errors import UserError
from l4f_jax.io import files
from l4f_jax.method import student as student_lib
from l4f_jax.system import metrics_log, weights

FORMAT = "l4f_jax.segmenter_artifact"
VERSION = 1
MODEL_FILE = "model.jax"
META_FILE = "model.json"
PLATFORMS = ("cpu", "cuda", "tpu")
ONNX_FILE = "model.onnx"
# GroupNormalization has its current definition (scale and bias per channel) since opset 21; the
# other operators the student needs are older. onnxruntime runs opset 21 since release 1.20.
ONNX_OPSET = 21
ONNX_HINT = "pip install -r requirements-onnx.txt"
# Refusal threshold of the export-time check: onnxruntime's alpha differs from jax's by float32
# rounding of reordered sums (5.5e-6 for the built-in world's student, docs/segmentation.md); a
# wrong conversion (a mistranslated operator or layout) is off by far more.
ONNX_CHECK_ATOL = 1e-4
EXPORT_HINT = "export it again with python -m experiments.export_segmenter"
INPUT = {"dtype": "uint8", "shape": ["B", "S", "S", 3], "layout": "NHWC", "channels": "RGB",
         "range": [0, 255], "colour": "sRGB as stored; no normalisation needed (the artifact maps "
         "x to x / 127.5 - 1 itself)"}
OUTPUT = {"dtype": "float32", "shape": ["B", "S", "S"], "range": [0, 1],
          "meaning": "alpha: the soft foreground mask; hard mask = alpha > threshold"}


def is_artifact(path: str) -> bool:
  """True if `path` is an artifact folder (holding model.json of this format) or its model.jax."""
  folder = os.path.dirname(path) if os.path.basename(path) == MODEL_FILE else path
  try:
    with open(os.path.join(folder, META_FILE)) as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def provenance(seg: weights.LoadedSegmenter) -> dict:
  """Where the student came from: the generator's and A's fingerprints (from its export, else from
  the pairs it was trained on, when that folder is still there), its own fingerprint, its
  architecture and training config."""
  cfg = seg.config
  found = {k: cfg.get(k) for k in ("generator_fingerprint", "alpha_fingerprint")}
  pairs = cfg.get("pairs")
  if None in found.values() and pairs:
    try:
      with open(os.path.join(pairs, "pairs.json")) as f:
        meta = json.load(f)
      found = {k: v if v is not None else meta.get(k) for k, v in found.items()}
    except (OSError, ValueError, AttributeError):
      pass
  return {**found, "segmenter_fingerprint": weights.fingerprint(seg.params),
          "segmenter": os.path.abspath(seg.path), "arch": cfg.get("arch"),
          "steps": cfg.get("steps"), "pairs": pairs, "student_config": cfg.get("train_config")}


def serialize_student(seg: weights.LoadedSegmenter, platforms=PLATFORMS) -> bytes:
  """`jax.export` of `alpha_from_uint8` with the student's weights inside, batch size symbolic."""
  params = jax.tree.map(np.asarray, seg.params)
  fn = jax.jit(lambda x: student_lib.alpha_from_uint8(params, x, model=seg.module))
  b, = jax.export.symbolic_shape("B")
  spec = jax.ShapeDtypeStruct((b, seg.size, seg.size, 3), jnp.uint8)
  try:
    return bytes(jax.export.export(fn, platforms=tuple(platforms))(spec).serialize())
  except ImportError as e:  # jax needs flatbuffers to serialize (pinned in requirements.txt)
    raise UserError(f"cannot serialize the artifact: {e}; pip install -r requirements.txt") from None


def onnx_modules():
  """(jax2onnx, onnxruntime), imported only when --onnx asks for them (requirements-onnx.txt)."""
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"--onnx needs jax2onnx and onnxruntime, which are not installed; "
                    f"{ONNX_HINT} (or export without --onnx)", detail=str(e)) from None
  return jax2onnx, onnxruntime


@contextlib.contextmanager
def _quiet(*loggers: str):
  """Errors only from `loggers`, and no stdout: jax2onnx 0.13 logs, with tracebacks, each of its
  plugins for other libraries that fails to import, and prints debug lines; onnx_ir warns about
  every shape tensor it cannot type. None of it concerns the student."""
  saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
  for lg, _ in saved:
    lg.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    for lg, level in saved:
      lg.setLevel(level)


def onnx_student(seg: weights.LoadedSegmenter, modules=None) -> tuple[bytes, dict]:
  """(model.onnx bytes, its model.json entry): `alpha_from_uint8` with the student's weights
  converted by jax2onnx, batch dynamic, then run by onnxruntime (CPU) on a check batch of 2 and
  compared with jax; refused (one line) beyond ONNX_CHECK_ATOL or when not finite."""
  jax2onnx, ort = modules or onnx_modules()
  params = jax.tree.map(np.asarray, seg.params)
  fn = lambda x: student_lib.alpha_from_uint8(params, x, model=seg.module)
  b, = jax.export.symbolic_shape("B")
  spec = jax.ShapeDtypeStruct((b, seg.size, seg.size, 3), jnp.uint8)
  with _quiet("jax2onnx", "onnx_ir"):
    proto = jax2onnx.to_onnx(fn, [spec], model_name="l4f_segmenter", opset=ONNX_OPSET,
                             input_names=["images"], output_names=["alpha"])
  blob = proto.SerializeToString()
  x = np.random.default_rng(0).integers(0, 256, (2, seg.size, seg.size, 3), dtype=np.uint8)
  got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
  want = np.asarray(jax.jit(fn)(x))
  diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
  if not diff <= ONNX_CHECK_ATOL:  # also NaN
    raise UserError(f"--onnx: onnxruntime's alpha differs from the student's by {diff:.3g} "
                    f"(> {ONNX_CHECK_ATOL}) on a check batch; the conversion is wrong, use "
                    f"model.jax")
  return blob, {"file": ONNX_FILE, "opset": ONNX_OPSET, "input": "images", "output": "alpha",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "jax2onnx_version": importlib.metadata.version("jax2onnx"),
                "onnxruntime_version": ort.__version__, "check_max_abs_diff": diff}


def export_segmenter(seg: weights.LoadedSegmenter, out: str, overwrite: bool = False,
                     default_fit: str = "pad", onnx: bool = False) -> dict:
  """Writes <out>/model.jax, <out>/model.json and with `onnx` <out>/model.onnx (module docstring)
  atomically; returns the description. `out` is checked like every program output
  (`files.check_output_dir`), and jax2onnx's presence before that."""
  modules = onnx_modules() if onnx else None
  out = files.check_output_dir(out, overwrite, program="export_segmenter", summary=META_FILE,
                               owned=(MODEL_FILE, META_FILE, ONNX_FILE),
                               inputs=[("--segmenter", seg.path)])
  blob = serialize_student(seg)
  onnx_blob, onnx_meta = onnx_student(seg, modules) if onnx else (None, None)
  meta = {"format": FORMAT, "version": VERSION, "size": seg.size, "threshold": seg.threshold,
          "input": INPUT, "output": OUTPUT, "fit": default_fit, "platforms": list(PLATFORMS),
          "jax_version": jax.__version__,
          "serialization_version": jax.export.deserialize(blob).calling_convention_version,
          "model_sha256": hashlib.sha256(blob).hexdigest(), "onnx": onnx_meta,
          "provenance": provenance(seg)}
  with files.staged(out, program="export_segmenter") as st:
    for name, data in ((MODEL_FILE, blob), (ONNX_FILE, onnx_blob)):
      if data is not None:
        files.atomic_write(os.path.join(st.path, name),
                           lambda tmp, data=data: open(tmp, "wb").write(data))
    metrics_log.write_json(os.path.join(st.path, META_FILE), meta)
    st.commit()
  return meta


@dataclasses.dataclass(frozen=True)
class Artifact:
  """A loaded artifact: its folder, description and deserialized `jax.export.Exported`."""
  path: str
  meta: dict
  exported: Any
  size: int
  threshold: float
  fingerprint: str


def read_meta(path: str, flag: str = "--segmenter") -> tuple[str, dict]:
  """(folder, description) of an artifact folder or its model.jax; one-line refusals."""
  folder = os.path.dirname(path) if os.path.basename(path) == MODEL_FILE else path
  meta_path = os.path.join(folder, META_FILE)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{flag}={path}: {META_FILE} is missing or unreadable; {EXPORT_HINT}",
                    detail=str(e)) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise UserError(f"{flag}={path}: {META_FILE} is not a version-{VERSION} segmenter artifact "
                    f"description; {EXPORT_HINT}")
  return folder, meta


def load_artifact(path: str, flag: str = "--segmenter") -> Artifact:
  """Reads and checks an artifact (module docstring)."""
  folder, meta = read_meta(path, flag)
  if meta.get("jax_version") != jax.__version__:
    raise UserError(f"{flag}={path} was exported with jax {meta.get('jax_version')}, this is jax "
                    f"{jax.__version__}; {EXPORT_HINT} from its segmenter directory")
  blob_path = os.path.join(folder, MODEL_FILE)
  if not os.path.isfile(blob_path) or _sha256(blob_path) != meta.get("model_sha256"):
    raise UserError(f"{flag}={path}: {MODEL_FILE} is missing or damaged (its sha256 differs "
                    f"from {META_FILE}); copy it again or {EXPORT_HINT}")
  with open(blob_path, "rb") as f:
    blob = f.read()
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # pylint: disable=broad-except  # any failure: jax cannot read this one
    raise UserError(f"{flag}={path}: jax {jax.__version__} cannot deserialize {MODEL_FILE} "
                    f"(unsupported serialization version?); {EXPORT_HINT}",
                    detail=f"{type(e).__name__}: {e}") from None
  size = int(meta.get("size", 0))
  aval = exported.in_avals[0] if len(exported.in_avals) == 1 else None
  if aval is None or tuple(aval.shape[1:]) != (size, size, 3) or aval.dtype != jnp.uint8:
    raise UserError(f"{flag}={path}: {MODEL_FILE} does not take uint8 [B, {size}, {size}, 3] "
                    f"as {META_FILE} says; {EXPORT_HINT}")
  return Artifact(path=folder, meta=meta, exported=exported, size=size,
                  threshold=float(meta["threshold"]), fingerprint=meta["model_sha256"][:16])


def artifact_runner(art: Artifact, device: Optional[Any] = None):
  """fn(uint8 [N, S, S, 3]) -> NumPy alpha [N, S, S], on `device` (default: the first local one)
  when its platform is among the artifact's."""
  device = device or jax.local_devices()[0]
  if device.platform not in art.exported.platforms:
    raise UserError(f"{art.path} was exported for {list(art.exported.platforms)}, not for "
                    f"{device.platform}; {EXPORT_HINT} on this machine")
  call = jax.jit(art.exported.call)
  put = functools.partial(jax.device_put, device=device)
  return lambda x: np.asarray(jax.device_get(call(put(x))))
