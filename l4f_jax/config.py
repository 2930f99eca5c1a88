"""Run configurations: one frozen dataclass per program, from which its absl flags are derived.

Every default lives once, in a dataclass field:

  @dataclasses.dataclass(frozen=True)
  class StudentConfig:
    pairs: str = option("workspace/datasets/pairs", "Pairs dataset (experiments.make_pairs).")
    lr: float = option(1e-3, "Adam learning rate.", gt=0)
    method: L4FConfig = L4FConfig()          # nested: its options become flags too

  define_flags(StudentConfig)                # in the CLI module, at import time
  cfg = from_flags(StudentConfig)            # after absl parsed argv (flagfiles included)
  cfg = resolve(StudentConfig, lr=3e-4)      # in tests and library callers: the same checks

`option(default, help, flag=..., choices=..., gt/ge/le/lt=...)` adds the help text, the flag name
(default: the field name; `flag=None` keeps a field out of the flags, e.g. a value derived at run
time) and value checks. A nested config's fields are flags too; `nested(Cls, prefix="student_")`
prefixes their names, so one program can hold several stages' configs. `validate` runs the checks and raises one-line UserErrors naming the flag;
floats must be finite (`--lr=nan` is refused). `to_dict` is what a run stores in flags.json.
"""
from __future__ import annotations

import dataclasses
import os
import math
import sys
import typing
from typing import Any

from absl import flags

from l4f_jax.errors import UserError

_UNSET = object()


def option(default, help: str, *, flag: Any = _UNSET, choices=None, gt=None, ge=None, lt=None,
           le=None, nonempty: bool = False):
  """A config field with its flag's help text, name and value checks (see the module docstring)."""
  meta = dict(help=help, choices=tuple(choices) if choices else None, gt=gt, ge=ge, lt=lt, le=le,
              nonempty=nonempty)
  if flag is not _UNSET:
    meta["flag"] = flag
  return dataclasses.field(default=default, metadata=meta)


def _base_type(tp):
  """int / float / str / bool (Optional[...] unwrapped), or a dataclass type."""
  if typing.get_origin(tp) is typing.Union:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if len(args) == 1 else tp
  return tp


def nested(cls, *, prefix: str = "", flags: bool = True, derived: tuple[str, ...] = ()):
  """A field holding a nested config `cls()`; its flags get `prefix` (e.g. 'student_'), or none
  at all with flags=False (a stage whose options the enclosing program derives). `derived` names
  the fields of `cls` (nested ones by their own field name) that the enclosing program sets, e.g.
  a stage's input and output paths: they get no flag."""
  unknown = set(derived) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
  return dataclasses.field(default_factory=cls, metadata=dict(prefix=prefix, flags=flags,
                                                              derived=tuple(derived)))


def _fields(cls, prefix="", flag_prefix="", flags_on=True, derived=()):
  """Yields (path, flag name or None, field, base type) for every leaf field, nested included."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    tp = _base_type(hints[f.name])
    on = flags_on and f.name not in derived
    if dataclasses.is_dataclass(tp):
      yield from _fields(tp, prefix + f.name + ".", flag_prefix + f.metadata.get("prefix", ""),
                         on and f.metadata.get("flags", True), f.metadata.get("derived", ()))
      continue
    name = f.metadata.get("flag", f.name)
    yield prefix + f.name, (flag_prefix + name if name is not None and on else None), f, tp


def flag_names(cls) -> dict[str, str]:
  """{field path: flag name} of the fields that are flags."""
  return {path: name for path, name, _, _ in _fields(cls) if name is not None}


def calling_module(depth: int = 2) -> str:
  """The module that called the caller, named as absl names it (the script is sys.argv[0]), so
  that flags defined on its behalf are its own: its --help lists them."""
  name = sys._getframe(depth).f_globals.get("__name__")
  return sys.argv[0] if name == "__main__" else name


def define_flags(cls, flag_values=flags.FLAGS, skip=()) -> None:
  """Defines one absl flag per (nested) field of `cls`, with the field's default and help."""
  module_name = calling_module()
  defaults = to_dict(cls())
  for path, name, f, tp in _fields(cls):
    if name is None or name in skip or name in flag_values:
      continue
    default = _get(defaults, path)
    help_ = f.metadata.get("help") or f"{path} (see {cls.__name__})."
    choices = f.metadata.get("choices")
    if choices:
      flags.DEFINE_enum(name, default, list(choices), help_, flag_values=flag_values, module_name=module_name)
    elif tp is bool:
      flags.DEFINE_bool(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif tp is int:
      flags.DEFINE_integer(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif tp is float:
      flags.DEFINE_float(name, default, help_, flag_values=flag_values, module_name=module_name)
    elif tp is str:
      flags.DEFINE_string(name, default, help_, flag_values=flag_values, module_name=module_name)
    else:
      raise TypeError(f"{cls.__name__}.{path}: unsupported flag type {tp}")


def _get(d: dict, path: str):
  for k in path.split("."):
    d = d[k]
  return d


def _build(cls, values: dict, prefix=""):
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    tp = _base_type(hints[f.name])
    if dataclasses.is_dataclass(tp):
      kwargs[f.name] = _build(tp, values, prefix + f.name + ".")
    elif prefix + f.name in values:
      kwargs[f.name] = values[prefix + f.name]
  return cls(**kwargs)


class ParseOnly(Exception):
  """Raised once the flags parsed and validated when the environment sets L4F_PARSE_ONLY=1: the
  documentation's commands are checked this way without running them (tests/test_docs.py)."""


def stop_if_parse_only() -> None:
  if os.environ.get("L4F_PARSE_ONLY") == "1":
    raise ParseOnly()


def from_flags(cls, flag_values=flags.FLAGS):
  """The validated config whose flag fields take the parsed flag values."""
  values = {path: flag_values[name].value for path, name in flag_names(cls).items()
            if name in flag_values}
  cfg = validate(_build(cls, values))
  stop_if_parse_only()
  return cfg


def resolve(cls, **overrides):
  """`cls` with `overrides` (flag names or field paths with '.' written '__'), validated."""
  by_flag = {name: path for path, name in flag_names(cls).items()}
  values = {}
  for k, v in overrides.items():
    path = by_flag.get(k, k.replace("__", "."))
    if path not in {p for p, *_ in _fields(cls)}:
      raise TypeError(f"{cls.__name__} has no option {k!r}")
    values[path] = v
  return validate(_build(cls, values))


def validate(cfg):
  """Checks every field (finite floats, bounds, choices); raises UserError naming the flag."""
  for path, name, f, tp in _fields(type(cfg)):
    v = _get_attr(cfg, path)
    label = f"--{name}" if name else path
    m = f.metadata
    if v is None:
      continue
    if tp is float and isinstance(v, (int, float)) and not math.isfinite(v):
      raise UserError(f"{label}={v} must be a finite number")
    if m.get("choices") and v not in m["choices"]:
      raise UserError(f"{label}={v!r} must be one of {list(m['choices'])}")
    if m.get("nonempty") and not v:
      raise UserError(f"{label} is required")
    for key, ok, word in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                          ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
      bound = m.get(key)
      if bound is not None and not ok(v, bound):
        raise UserError(f"{label}={v} must be {word} {bound}")
  return cfg


def _get_attr(cfg, path: str):
  for k in path.split("."):
    cfg = getattr(cfg, k)
  return cfg


def to_dict(cfg) -> dict:
  """JSON-able nested dict of a config (what flags.json stores)."""
  return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
  """Inverse of `to_dict` (unknown keys are ignored, missing ones take the defaults)."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in d:
      continue
    tp = _base_type(hints[f.name])
    kwargs[f.name] = from_dict(tp, d[f.name]) if dataclasses.is_dataclass(tp) else d[f.name]
  return cls(**kwargs)


def replace(cfg, **changes):
  """dataclasses.replace, validated."""
  return validate(dataclasses.replace(cfg, **changes))

