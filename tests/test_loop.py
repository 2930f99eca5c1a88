"""The shared run system (l4f_jax.config, l4f_jax.system.loop), in-process and without models:
derived flags and validation, run-directory checks and locks, the finiteness guard, resume, and the
clean stop on a signal."""
import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from l4f_jax import config as C
from l4f_jax.method.step import L4FConfig
from l4f_jax.system import loop
from l4f_jax.errors import UserError
from l4f_jax.programs.train_labels4free import TrainConfig


# ------------------------------------------------------------------------------------------ config


def test_flags_are_derived_from_the_config_with_one_default():
  fv = flags.FlagValues()
  C.define_flags(TrainConfig, flag_values=fv)
  fv(["prog"])
  cfg = C.from_flags(TrainConfig, fv)
  assert cfg == TrainConfig()  # every default comes from the dataclass
  assert fv["trunc"].value == L4FConfig().truncation  # renamed flag of a nested field
  assert "stddev_chunks" not in fv and "compute_dtype" not in fv  # derived fields are no flags
  fv(["prog", "--trunc=0.5", "--lr=3e-4", "--batch=4"])
  cfg = C.from_flags(TrainConfig, fv)
  assert cfg.method.truncation == 0.5 and cfg.method.lr == 3e-4 and cfg.batch == 4
  assert C.from_dict(TrainConfig, json.loads(json.dumps(C.to_dict(cfg)))) == cfg


@pytest.mark.parametrize("override, message", [
    (dict(lr=float("nan")), "--lr=nan must be a finite number"),
    (dict(lr=0.0), "--lr=0.0 must be > 0"),
    (dict(iter=-3), "--iter=-3 must be >= 0"),
    (dict(background_mode="bogus"), "--background_mode='bogus' must be one of"),
    (dict(trunc=float("inf")), "--trunc=inf must be a finite number"),
    (dict(generator=""), "--generator is required"),
])
def test_validation_names_the_flag(override, message):
  with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
    C.resolve(TrainConfig, **override)


def test_nested_prefix_and_unknown_option():
  @dataclasses.dataclass(frozen=True)
  class Inner:
    x: int = C.option(1, "x", ge=0)

  @dataclasses.dataclass(frozen=True)
  class Outer:
    a: Inner = C.nested(Inner, prefix="a_")
    b: Inner = C.nested(Inner, flags=False)

  assert C.flag_names(Outer) == {"a.x": "a_x"}
  assert C.resolve(Outer, a_x=3).a.x == 3 and C.resolve(Outer, b__x=4).b.x == 4
  with pytest.raises(UserError, match="--a_x=-1 must be >= 0"):
    C.resolve(Outer, a_x=-1)
  with pytest.raises(TypeError):
    C.resolve(Outer, nope=1)

  @dataclasses.dataclass(frozen=True)
  class Pair:
    x: int = C.option(1, "x", ge=0)
    y: Inner = C.nested(Inner, prefix="y_")

  @dataclasses.dataclass(frozen=True)
  class Stage:  # the enclosing program sets `x` and the whole of `y` (e.g. a stage's paths)
    s: Pair = C.nested(Pair, prefix="s_", derived=("x", "y"))
    t: Pair = C.nested(Pair, prefix="t_", derived=("x",))

  assert C.flag_names(Stage) == {"t.y.x": "t_y_x"}
  assert C.resolve(Stage, s__x=5, t_y_x=6).s.x == 5
  with pytest.raises(TypeError, match="no fields"):
    C.nested(Pair, derived=("z",))


# ------------------------------------------------------------------------------------- run dirs


def _open(workdir, **kw):
  kw = dict(dict(program="unit", config={"a": 1}, identity={"size": 16}, keep=2,
                 resume_keys=("size",)), **kw)
  return loop.open_run(str(workdir), **kw)


def test_open_run_refuses_foreign_and_other_program_dirs(tmp_path):
  foreign = tmp_path / "foreign"
  (foreign / "alpha").mkdir(parents=True)
  (foreign / "flags.json").write_text('{"something": "else"}')
  with pytest.raises(UserError, match="files that are not a run"):
    _open(foreign)
  with pytest.raises(UserError, match="files that are not a run"):
    _open(foreign, overwrite=True)  # --overwrite never deletes what is not a run of this program
  assert (foreign / "alpha").is_dir() and (foreign / "flags.json").read_text() == '{"something": "else"}'
  other = tmp_path / "other"
  _open(other, program="other").close()
  with pytest.raises(UserError, match="holds a other run"):
    _open(other)
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(UserError, match="is a file"):
    _open(a_file)


def test_lock_refuses_a_second_live_run_and_replaces_a_stale_one(tmp_path):
  run = _open(tmp_path / "w")
  try:
    with pytest.raises(UserError, match="is in use by process"):
      _open(tmp_path / "w")
  finally:
    run.close()
  lock = tmp_path / "w" / loop.LOCK_FILE
  assert not lock.exists()
  import socket
  lock.write_text(f"{socket.gethostname()} 999999999\n")  # a dead process
  _open(tmp_path / "w").close()


def _fake_training(run, start, end, nan_at=None, signal_at=None, save_every=4, log_every=3,
                   profile=None, hooks=()):
  """A jitted 'training' of one scalar parameter; metrics become NaN from `nan_at` on."""
  state = {"w": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}
  state, start = run.restore_or(state)

  @jax.jit
  def step(state, x, bad):
    w = state["w"] + x + jnp.where(bad, jnp.nan, 0.0)
    return {"w": w, "step": state["step"] + 1}, {"loss": w * 2}

  def step_fn(i, state, batch):
    if signal_at == i:
      os.kill(os.getpid(), signal.SIGINT)
    return step(state, batch, nan_at is not None and i >= nan_at)

  batches = ((i, jnp.float32(i)) for i in range(start, end))
  return loop.train_loop(state, batches, step_fn, run=run, start=start, end=end,
                         log_every=log_every, save_every=save_every, console_keys=("loss",),
                         profile_steps=profile, hooks=hooks)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
  run = _open(tmp_path / "w")
  try:
    with pytest.raises(UserError, match=r"^iteration 9: non-finite loss=nan; .* last good "
                                        r"checkpoint is iteration 8"):
      _fake_training(run, 0, 20, nan_at=9)  # checked at every log (9) and save (7, 11) point
  finally:
    run.close()
  run = _open(tmp_path / "w")
  try:
    assert run.ckpt.all_steps() == [4, 8]
    state, start = run.restore_or({"w": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)})
    assert start == 8 and float(state["w"]) == sum(range(8))  # finite, the state after 0..7
  finally:
    run.close()
  run = _open(tmp_path / "w2")
  try:
    with pytest.raises(UserError, match=r"^iteration 7: .* last good checkpoint is iteration 4"):
      _fake_training(run, 0, 20, nan_at=7)  # caught at the save point 7: checkpoint 8 never written
    assert run.ckpt.all_steps() == [4]
  finally:
    run.close()


def test_profile_steps_trace_the_chosen_iterations(tmp_path):
  """--profile_steps=a:b writes one jax.profiler trace (xplane) into <workdir>/profile."""
  assert loop.parse_profile_steps("") is None and loop.parse_profile_steps("2:5") == (2, 5)
  for bad in ("5:2", "3:3", "-1:2", "a:b", "4"):
    with pytest.raises(UserError, match="--profile_steps="):
      loop.parse_profile_steps(bad)
  run = _open(tmp_path / "w")
  try:
    state = _fake_training(run, 0, 6, profile=(2, 4))
  finally:
    run.close()
  assert float(state["w"]) == sum(range(6))
  traces = list((tmp_path / "w" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_resume_is_exact_and_trims_redone_metrics(tmp_path):
  full = _open(tmp_path / "full")
  try:
    want = _fake_training(full, 0, 12)
  finally:
    full.close()
  part = _open(tmp_path / "part")
  try:
    with pytest.raises(loop.Interrupted, match="stopped by SIGINT after iteration 5; checkpoint 6"):
      _fake_training(part, 0, 12, signal_at=5)
  finally:
    part.close()
  part = _open(tmp_path / "part")
  try:
    assert part.ckpt.all_steps() == [4, 6]
    got = _fake_training(part, 0, 12)
  finally:
    part.close()
  assert float(got["w"]) == float(want["w"]) == sum(range(12))
  rows = lambda d: [json.loads(r) for r in open(d / "logs" / "metrics.jsonl")]
  assert rows(tmp_path / "part") == rows(tmp_path / "full")


def test_resume_identity_mismatch_is_refused(tmp_path):
  run = _open(tmp_path / "w")
  try:
    _fake_training(run, 0, 4)
  finally:
    run.close()
  with pytest.raises(UserError, match=r"holds a different run \(size 16 -> 32\)"):
    _open(tmp_path / "w", identity={"size": 32})
  run = _open(tmp_path / "w", identity={"size": 32}, overwrite=True)  # --overwrite starts afresh
  try:
    assert run.latest is None
  finally:
    run.close()


def test_tree_is_finite():
  assert loop.tree_is_finite({"a": np.ones(3), "b": [np.zeros(2, np.int32)]})
  assert not loop.tree_is_finite({"a": np.array([1.0, np.inf])})


def test_collapse_watch():
  from l4f_jax.programs.train_labels4free import collapse_guard, collapse_reason
  ok = {"alpha_mean": 0.4, "alpha_frac_fg": 0.35}
  assert collapse_reason(ok, 0.95) is None
  assert "all foreground" in collapse_reason({"alpha_mean": 0.97, "alpha_frac_fg": 0.9}, 0.95)
  assert "all foreground" in collapse_reason({"alpha_mean": 0.9, "alpha_frac_fg": 0.96}, 0.95)
  assert "all background" in collapse_reason({"alpha_mean": 0.03, "alpha_frac_fg": 0.0}, 0.95)
  stop, warn = collapse_guard("stop", 0.95), collapse_guard("warn", 0.95)
  assert collapse_guard("off", 0.95) is None
  assert stop({"alpha_mean": 0.99, "alpha_frac_fg": 0.99}).startswith("A collapsed")
  assert warn({"alpha_mean": 0.99, "alpha_frac_fg": 0.99}) is None  # warns, keeps running


def test_guard_stops_the_run_like_a_nonfinite_loss(tmp_path):
  from l4f_jax.programs.train_labels4free import collapse_guard
  run = _open(tmp_path / "w")
  try:
    state = {"w": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}
    step = jax.jit(lambda s, x: ({"w": s["w"] + x, "step": s["step"] + 1},
                                {"alpha_mean": 0.4 + 0.06 * x, "alpha_frac_fg": 0.3 + 0 * x}))
    batches = ((i, jnp.float32(i)) for i in range(20))
    # alpha_mean passes 0.95 at iteration 10 (1.0), a log point: checkpoint 12 is never saved.
    with pytest.raises(UserError, match=r"^iteration 10: A collapsed to all foreground .* last "
                                        r"good checkpoint is iteration 8"):
      loop.train_loop(state, batches, lambda i, s, b: step(s, b), run=run, start=0, end=20,
                      log_every=5, save_every=4, guard=collapse_guard("stop", 0.95))
    assert run.ckpt.all_steps() == [4, 8]
  finally:
    run.close()


def test_staged_directories_follow_the_umask(tmp_path):
  from l4f_jax.io import files
  old = os.umask(0o022)
  try:
    tmp = files.staging_dir(str(tmp_path / "out"))
    assert os.stat(tmp).st_mode & 0o777 == 0o755
    open(os.path.join(tmp, "a"), "w").close()
    files.replace_dir(tmp, str(tmp_path / "out"))
    tmp = files.staging_dir(str(tmp_path / "out"))
    files.replace_dir(tmp, str(tmp_path / "out"))  # replaces the old one
    assert os.listdir(tmp_path / "out") == [] and sorted(os.listdir(tmp_path)) == ["out"]
    os.umask(0o002)
    assert os.stat(files.staging_dir(str(tmp_path / "g"))).st_mode & 0o777 == 0o775
  finally:
    os.umask(old)


def test_non_finite_weights_are_never_written(tmp_path):
  """save_weights (every export: convert, the trainers' finish_and_export) refuses NaN or inf,
  naming the array, and leaves neither the destination nor a staging folder."""
  from l4f_jax.system import weights
  trees = {"alpha": {"conv": {"kernel": np.ones((2, 2), np.float32),
                              "bias": np.array([0.0, np.inf], np.float32)}}}
  with pytest.raises(UserError, match=r"non-finite weights in alpha/conv/bias"):
    weights.save_weights(str(tmp_path / "w"), {"kind": "x"}, trees)
  assert os.listdir(tmp_path) == []


def test_hooks_run_on_their_schedules_with_the_iterations_metrics(tmp_path):
  """A caller's hook runs after the iterations it is due (every 5, and the last), after the
  built-in checkpoint hook, with the metrics of that very iteration fetched to the host."""
  seen = []
  record = lambda i, state, m: seen.append((i, float(m["loss"]), int(state["step"])))
  hook = loop.Hook("record", loop.every(5, last=11), record, needs_metrics=True)
  run = _open(tmp_path / "w")
  try:
    _fake_training(run, 0, 12, hooks=[hook])
  finally:
    run.close()
  # w after iteration i is 0 + 1 + ... + i; loss = 2 w; the state has taken i + 1 steps
  assert seen == [(i, float(i * (i + 1)), i + 1) for i in (0, 5, 10, 11)]
  assert run.ckpt.all_steps() == [8, 12]


def test_environment_error_names_the_file_a_storage_library_reports():
  """TensorStore names the failed file in its text and repeats every path, JSON-escaped, in a spec
  after it; the one-line error names the file's destination (the staged folder's final name, or
  Orbax's checkpoint step), not a fragment of the spec."""
  from l4f_jax.errors import environment_error, environment_message
  spec = ('[tensorstore_spec=\'{\\"kvstore\\":{\\"path\\":\\"/w/.out.tmp-ab/state/\\"},'
          '\\"path\\":\\"d.w/\\"}\']')
  e = ValueError('RESOURCE_EXHAUSTED: Error writing "d.w/.zarray" in OCDBT database at local file '
                 '"/w/.out.tmp-ab/state/": Failed writing: "/w/.out.tmp-ab/state/d/72b9": Failed '
                 'to write 224 bytes to file 14: No space left on device ' + spec)
  assert environment_error(RuntimeError("save failed")) is None
  try:
    raise RuntimeError("save failed") from e
  except RuntimeError as outer:
    found = environment_error(outer)
  assert found.errno == 28 and found.filename == "/w/.out.tmp-ab/state/d/72b9"
  assert environment_message(found).startswith("the disk is full writing /w/out [Errno 28]")
  ckpt = OSError(28, "No space left on device", "/r/checkpoints/3.orbax-checkpoint-tmp/state/x")
  assert " writing /r/checkpoints/3 [" in environment_message(ckpt)
