"""A restricted reader of PyTorch checkpoints and NVIDIA network pickles: NumPy out, no torch, no
code run from the file.

Three containers are read:

- torch's zip checkpoints (`torch.save` since 1.6): `<root>/data.pkl`, a pickle whose tensors name
  their storages through persistent ids ('storage', storage type, key, location, numel), and the
  raw little-endian storages `<root>/data/<key>` (torch/serialization.py, `_save` / `_load`);
- torch's legacy stream (`torch.save(..., _use_new_zipfile_serialization=False)`, and every file
  written before torch 1.6): the pickles magic number, protocol version, system info, the object
  (storages as persistent ids with a root key), the sorted storage keys, then per key an int64
  element count and the raw bytes (serialization.py `_legacy_save`);
- plain pickles, e.g. NVIDIA's `network-snapshot-*.pkl` (stylegan2-ada-pytorch
  `training/training_loop.py`: `pickle.dump` of a dict of modules). Each module there pickles as
  `torch_utils.persistence._reconstruct_persistent_obj(meta)` (`torch_utils/persistence.py`), which
  would `exec` the module's source code `meta['module_src']`; here it becomes a `PersistentObject`
  holding the class name and the module's state, and the source is dropped unread. Their tensors
  carry their storages as `torch.storage._load_from_bytes(b)`, `b` a legacy stream, parsed as above.

The unpickler resolves only the globals in `ALLOWED` (tensor and storage rebuilds, the persistence
reconstructor, OrderedDict, EasyDict, numpy dtypes and scalars, torch dtypes and storage types, and
argparse.Namespace as a plain attribute holder). Any other global - os.system, builtins.eval, a
class of someone's code - is refused with one line naming it, before anything is called. Tensors
become NumPy arrays of the same dtype, shape and values (bfloat16 as ml_dtypes.bfloat16).
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

from l4f_jax.errors import UserError

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch/serialization.py MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class Refused(UserError):
  """The file asks for something this reader does not provide (its message names it)."""


# ------------------------------------------------------------------------------------------------
# Stand-ins for the objects a checkpoint may hold


class PersistentObject:
  """An NVIDIA persistent module (torch_utils.persistence): class name and state, no code."""

  def __init__(self, class_name: str, state: dict, version: Any = None):
    self.class_name = class_name
    self.state = state
    self.version = version

  def attr(self, name: str, default: Any = None) -> Any:
    return self.state.get(name, default)

  def tensors(self, kind: str) -> dict:
    """'_parameters' or '_buffers' as {name: array} (None entries dropped)."""
    return {k: v for k, v in (self.state.get(kind) or {}).items() if v is not None}

  def child(self, name: str) -> Optional["PersistentObject"]:
    return (self.state.get("_modules") or {}).get(name)

  def children(self) -> dict:
    return dict(self.state.get("_modules") or {})

  def __repr__(self):
    return f"PersistentObject({self.class_name})"


class Namespace:
  """argparse.Namespace as read from a checkpoint: attributes only (rosinality's `args`)."""

  def __repr__(self):
    return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class EasyDict(dict):
  """dnnlib.util.EasyDict as a plain dict (attribute access is not needed to read it)."""


class _StorageType:
  """torch.FloatStorage and friends: the dtype of a storage's elements."""

  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


def _bfloat16():
  import ml_dtypes  # noqa: PLC0415  (installed with jax)
  return ml_dtypes.bfloat16


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8, "BFloat16Storage": None,
}
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128, "bfloat16": None,
}


def _storage_type(name: str) -> _StorageType:
  dtype = _STORAGE_DTYPES[name]
  return _StorageType(name, _bfloat16() if dtype is None else dtype)


def _torch_dtype(name: str) -> np.dtype:
  dtype = _TORCH_DTYPES[name]
  return np.dtype(_bfloat16() if dtype is None else dtype)


# ------------------------------------------------------------------------------------------------
# The allowed callables


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  """torch._utils._rebuild_tensor_v2 -> a NumPy array (a copy, C order)."""
  del requires_grad, hooks
  if metadata:
    raise Refused(f"a tensor carries metadata {sorted(metadata)} (conjugate / negative views), "
                  "which this reader does not support")
  if storage is None:  # the first pass over a legacy stream (storages not read yet)
    return None
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise Refused(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or int(offset) < 0 or min(size + stride, default=0) < 0:
    raise Refused(f"a tensor has an invalid layout (size {list(size)}, stride {list(stride)})")
  last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
  if last >= storage.size:
    raise Refused(f"a tensor reaches element {last} of a storage of {storage.size}")
  if not all(size):
    return np.zeros(size, storage.dtype)
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[int(offset):], size, [s * item for s in stride])
  return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
  """torch._utils._rebuild_parameter(_with_state): the data, as an array."""
  del requires_grad, hooks
  if state:
    raise Refused(f"a parameter carries Python state {sorted(state)[:3]}")
  return data


def _reconstruct_persistent(meta):
  """torch_utils.persistence._reconstruct_persistent_obj, without executing meta['module_src']."""
  if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(
      meta.get("state"), dict):
    raise Refused("a persistent object has no class state (not an NVIDIA network module)")
  return PersistentObject(str(meta.get("class_name")), dict(meta["state"]), meta.get("version"))


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
    raise Refused("a numpy scalar of an object dtype")
  return np.frombuffer(data, dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, dtype_code):
  if cls is not np.ndarray:
    raise Refused(f"numpy's _reconstruct of {getattr(cls, '__name__', cls)}")
  return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _numpy_dtype(spec, align=False, copy=False):
  dtype = np.dtype(spec, align, copy)
  if dtype.hasobject:
    raise Refused("a numpy object dtype")
  return dtype


def _codecs_encode(text, encoding="utf-8"):
  """_codecs.encode(str, 'latin1'): how protocol-2 pickles spell bytes."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise Refused("_codecs.encode other than (str, 'latin1')")
  return text.encode("latin1")


def _reconstructor(cls, base, state):
  """copyreg._reconstructor (protocols 0 and 1) for the allowed classes only."""
  if base is not object or cls not in (Namespace, EasyDict):
    raise Refused(f"copyreg._reconstructor of {getattr(cls, '__name__', cls)}")
  del state
  return cls.__new__(cls)


def _load_from_bytes(data):
  """torch.storage._load_from_bytes: a legacy torch.save stream holding one storage."""
  if not isinstance(data, bytes):
    raise Refused("torch.storage._load_from_bytes of a non-bytes value")
  obj = _read_legacy(io.BytesIO(data))
  if not isinstance(obj, np.ndarray):
    raise Refused(f"an embedded storage holds a {type(obj).__name__}")
  return obj


_NUMPY_CORE = {"multiarray.scalar": _numpy_scalar, "multiarray._reconstruct": _numpy_reconstruct}
ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): lambda: _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda: _reconstruct_persistent,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    ("dnnlib.util", "EasyDict"): lambda: EasyDict,
    ("dnnlib", "EasyDict"): lambda: EasyDict,
    ("argparse", "Namespace"): lambda: Namespace,
    ("numpy", "dtype"): lambda: _numpy_dtype,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("torch", "Size"): lambda: tuple,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("_codecs", "encode"): lambda: _codecs_encode,
    ("copyreg", "_reconstructor"): lambda: _reconstructor,
    ("builtins", "object"): lambda: object,
    ("__builtin__", "object"): lambda: object,
}
for _core in ("numpy.core", "numpy._core"):
  for _name, _fn in _NUMPY_CORE.items():
    _mod, _attr = _name.split(".")
    ALLOWED[(f"{_core}.{_mod}", _attr)] = (lambda f: lambda: f)(_fn)
for _name in _STORAGE_DTYPES:
  ALLOWED[("torch", _name)] = (lambda n: lambda: _storage_type(n))(_name)
for _name in _TORCH_DTYPES:
  ALLOWED[("torch", _name)] = (lambda n: lambda: _torch_dtype(n))(_name)

_TF_HINT = ("a TensorFlow-era StyleGAN pickle (dnnlib.tflib); convert it with legacy.py of "
            "NVlabs/stylegan2-ada-pytorch first")


class _Unpickler(pickle.Unpickler):
  """pickle.Unpickler that resolves only ALLOWED globals; `storages(saved_id)` serves persistent
  ids (None: a plain pickle, where a persistent id is refused)."""

  def __init__(self, f, storages: Optional[Callable] = None):
    super().__init__(f)
    self._storages = storages

  def find_class(self, module, name):
    entry = ALLOWED.get((module, name))
    if entry is not None:
      return entry()
    if module.startswith("dnnlib.tflib"):
      raise Refused(f"is {_TF_HINT}")
    shown = "os" if module in ("posix", "nt") else module
    raise Refused(f"asks for {shown}.{name}, which no checkpoint or network pickle needs; refused "
                  "without running anything")

  def persistent_load(self, pid):
    if self._storages is None:
      raise Refused("holds a persistent id outside a torch checkpoint")
    return self._storages(pid)


# ------------------------------------------------------------------------------------------------
# Containers


def _legacy_storage_ids(pending: dict, dry: bool):
  """persistent_load of a legacy stream: ('storage', type, root key, location, numel, view)."""
  def load(pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
      raise Refused(f"a legacy torch stream holds a persistent {kind!r} (pickled module "
                    "classes are not read)")
    _, stype, key, _, numel, view = pid
    if not isinstance(stype, _StorageType):
      raise Refused("a storage of an unknown type")
    pending.setdefault(str(key), (stype.dtype, int(numel)))
    if dry:
      return None
    root = pending[str(key)][2]
    if view is not None:
      _, offset, vsize = view
      return root.view(np.uint8)[int(offset):int(offset) + int(vsize)].view(stype.dtype)
    return root.view(stype.dtype) if root.dtype != stype.dtype else root
  return load


def _read_legacy(f) -> Any:
  """A legacy torch.save stream (file object at its start) -> the object, tensors as arrays."""
  head = [_Unpickler(f).load() for _ in range(3)]
  if head[0] != LEGACY_MAGIC or head[1] != LEGACY_PROTOCOL:
    raise Refused("is not a torch.save stream (bad magic number)")
  if not isinstance(head[2], dict) or not head[2].get("little_endian", True):
    raise Refused("is a big-endian torch.save stream")
  start = f.tell()
  pending: dict = {}
  _Unpickler(f, _legacy_storage_ids(pending, dry=True)).load()
  keys = _Unpickler(f).load()
  if not isinstance(keys, list):
    raise Refused("is not a torch.save stream (no storage key list)")
  for key in keys:
    if key not in pending:
      raise Refused(f"lists storage {key!r} that no tensor uses")
    dtype, numel = pending[key]
    (count,) = struct.unpack("<q", _read_exact(f, 8))
    data = _read_exact(f, count * dtype.itemsize)
    pending[key] = (dtype, numel, np.frombuffer(data, dtype).copy())
  f.seek(start)
  return _Unpickler(f, _legacy_storage_ids(pending, dry=False)).load()


def _read_exact(f, n: int) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise EOFError(f"storage data truncated ({len(data)} of {n} bytes)")
  return data


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise Refused("is a zip file but not a torch checkpoint (no <name>/data.pkl)")
    root = pkl[0][:-len("/data.pkl")]
    order = f"{root}/byteorder"
    if order in names and z.read(order).strip() not in (b"little", b""):
      raise Refused("is a big-endian torch checkpoint")

    def storage(pid):
      if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
        raise Refused("holds a persistent id that is not a storage")
      _, stype, key, _, numel = pid
      if not isinstance(stype, _StorageType):
        raise Refused("a storage of an unknown type")
      data = z.read(f"{root}/data/{key}")
      if len(data) < int(numel) * stype.dtype.itemsize:
        raise EOFError(f"storage {key} is truncated")
      return np.frombuffer(data, stype.dtype, count=int(numel))

    with z.open(pkl[0]) as f:
      return _Unpickler(io.BytesIO(f.read()), storage).load()


def read(path: str) -> Any:
  """Reads `path` (zip checkpoint, legacy torch.save file or plain pickle) -> the object.

  Raises `Refused` (one line, without the path) for a global outside ALLOWED and for structural
  problems; any other failure of the file (truncation, damage) propagates as the decoder raised it.
  """
  if zipfile.is_zipfile(path):
    return _read_zip(path)
  with open(path, "rb") as f:
    first = _Unpickler(f).load()
    if isinstance(first, int) and first == LEGACY_MAGIC:
      f.seek(0)
      return _read_legacy(f)
    return first
